"""Every Triton kernel compiles for Ampere and Hopper GPUs (sm_80, sm_90), checked on the CPU: the
interpreter the other kernel tests use forgives what the GPU compiler refuses (tests/compile_kernels.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from splitspec_kernels.triton_support import triton_available

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
def test_every_kernel_compiles_for_ampere_and_hopper():
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "compile_kernels.py"), "80", "90"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": ok") == 56, result.stdout  # 2 arches x (3 dtypes x 9 + rejection)
