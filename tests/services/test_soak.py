"""The small soak (issue 17): benchmarks/soak.py against a real three-process stack, with requests
cancelled, expiring and malformed among valid ones; nothing is held afterwards and every valid greedy
output is in-process output. The full run's numbers are in docs/benchmarks.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


def test_a_small_soak_loses_nothing_and_holds_nothing(tiny_llama, tmp_path):
    report_path = tmp_path / "soak.json"
    args = ["--model", str(tiny_llama), "--requests", "160", "--concurrency", "16", "--max-tokens", "24"]
    # the 10%: with pass row counts unbucketed (oneDNN caching a primitive per count) this run's
    # verifier grew 13%, with buckets 5% (docs/benchmarks.md, "The soak")
    args += ["--max-memory-growth", "0.1"]
    result = subprocess.run(
        [sys.executable, str(SOAK), *args, "--output", str(report_path), "--log-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert all(report["checks"].values()), report["checks"]
    outcomes = report["outcomes"]
    assert outcomes["valid"] == {"OK": 96} and outcomes["malformed"] == {"INVALID_ARGUMENT": 16}
    assert outcomes["cancelled"].get("CANCELLED", 0) > 0, outcomes["cancelled"]
    assert outcomes["expiring"].get("DEADLINE_EXCEEDED", 0) > 0, outcomes["expiring"]
    assert report["valid_outputs_checked"] >= 96 and report["kv_blocks_held"] == 0
