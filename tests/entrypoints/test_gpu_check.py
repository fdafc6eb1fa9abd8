"""scripts/gpu-check fails when a step fails, and keeps every step's log with the run's verdict.

Run here without a GPU: a stand-in `nvidia-smi` (one that works, or one that fails as on a broken
card), GPU_CHECK_KERNELS=none, and the GPU tests, which skip without CUDA."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def run_gpu_check(tmp_path: Path, nvidia_smi_works: bool) -> tuple[subprocess.CompletedProcess, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = (
        'if [ "$1" = --query-gpu=name ]; then echo "NVIDIA H100 80GB HBM3"; else echo "NVIDIA H100 80GB HBM3, 81559 MiB"; fi'
        if nvidia_smi_works
        else 'echo "No devices were found" >&2; exit 9'
    )
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\n{smi}\n")
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # this virtualenv's
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", OUT=str(out), GPU_CHECK_KERNELS="none")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-check")], capture_output=True, text=True, timeout=300, env=env
    )
    return result, out


def test_a_failing_step_fails_the_run_and_is_named(tmp_path):
    result, out = run_gpu_check(tmp_path, nvidia_smi_works=False)
    assert result.returncode != 0
    assert "gpu-check: FAILED steps: gpu" in result.stderr, result.stdout + result.stderr
    (run_dir,) = out.iterdir()
    assert "gpu 9" in (run_dir / "steps.txt").read_text().splitlines()
    assert "No devices were found" in (run_dir / "gpu.log").read_text()


def test_a_run_whose_steps_pass_keeps_their_logs(tmp_path):
    result, out = run_gpu_check(tmp_path, nvidia_smi_works=True)
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = out.iterdir()
    assert run_dir.name.endswith("_NVIDIA-H100-80GB-HBM3_unknown-commit"), run_dir.name
    steps = dict(line.split() for line in (run_dir / "steps.txt").read_text().splitlines())
    assert steps == {"gpu": "0", "versions": "0", "pytest-tiny": "0"}
    assert "skipped" in (run_dir / "pytest-tiny.log").read_text()
