"""benchmarks/gpu_kernels.py is meant for a session with a GPU; its --smoke mode runs every part of
it on tiny shapes here (Triton interpreter), so the script a GPU session depends on keeps working."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from splitspec_kernels.triton_support import triton_available

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
def test_gpu_benchmark_smoke_run() -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_kernels.py"), "--smoke"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "copy bandwidth" in proc.stdout
    assert "argmax agrees with transformers on 100.0% of rows" in proc.stdout


def test_verify_pass_profile_smoke_run(tiny_llama) -> None:
    """benchmarks/profile_verify.py, which a GPU session runs to decide on CUDA graphs, here on the CPU."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "profile_verify.py"), "--model", str(tiny_llama),
         "--device", "cpu", "--batches", "1,3", "-k", "4", "--passes", "2", "--temperature", "0.8"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batch   1, K=4:" in proc.stdout and "batch   3, K=4:" in proc.stdout
    assert "Self CPU time total" in proc.stdout
