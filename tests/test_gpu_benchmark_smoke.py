"""benchmarks/gpu_kernels.py is meant for a session with a GPU; its --smoke mode runs every part of
it on tiny shapes here (Triton interpreter), so the script a GPU session depends on keeps working."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernels.triton_support import triton_available

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
