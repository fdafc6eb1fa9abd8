"""CI cannot go green with the Triton kernel tests skipped (tests/conftest.py, .ci/run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

TESTS = Path(__file__).resolve().parents[1]


def run_kernel_tests_without_triton(tmp_path: Path, require: bool) -> subprocess.CompletedProcess:
    hidden = tmp_path / "hidden"
    (hidden / "triton").mkdir(parents=True)
    (hidden / "triton" / "__init__.py").write_text('raise ImportError("Triton hidden for this test")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hidden), str(TESTS.parent)]))
    env.pop("SPLITSPEC_REQUIRE_TRITON", None)
    if require:
        env["SPLITSPEC_REQUIRE_TRITON"] = "1"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(TESTS / "splitspec_kernels" / "test_rejection_sampling_kernel.py"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )


def test_without_the_requirement_kernel_tests_skip_when_triton_is_missing(tmp_path):
    result = run_kernel_tests_without_triton(tmp_path, require=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipped" in result.stdout


def test_with_the_requirement_a_missing_triton_fails_the_run(tmp_path):
    result = run_kernel_tests_without_triton(tmp_path, require=True)
    assert result.returncode != 0
    assert "SPLITSPEC_REQUIRE_TRITON=1 but Triton cannot be imported" in result.stdout + result.stderr
