"""The bounded fuzzing run (issue 17): benchmarks/fuzz.py against a real three-process stack, a few
seconds per service; every input gets an answer or a status with a message, and the servers keep
serving without holding anything or growing. The longer run's numbers are in docs/benchmarks.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

FUZZ = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz.py"


def test_fuzzed_messages_get_answers_and_leave_the_services_serving(tiny_llama, tmp_path):
    result = subprocess.run(
        [sys.executable, str(FUZZ), "--model", str(tiny_llama), "--seconds", "4", "--log-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("fuzz ")]
    assert [line.split(":")[0] for line in lines] == ["fuzz verifier", "fuzz proposer", "fuzz gateway"]
    for line in lines:
        assert "crashes 0" in line and " 0 inputs" not in line, line
