"""benchmarks/gpu_kernels.py is meant for a session with a GPU; its --smoke mode runs every part of
it on tiny shapes here (Triton interpreter), so the script a GPU session depends on keeps working."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from splitspec_kernels.triton_support import triton_available

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
def test_gpu_benchmark_smoke_run() -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_kernels.py"), "--smoke", "--profile", "--fp8"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "copy bandwidth" in proc.stdout
    assert "argmax agrees with transformers on 100.0% of rows" in proc.stdout
    assert "agreement with transformers: at least 100.0% of rows" in proc.stdout
    assert "CPU time of one pass by kernel group (5 passes profiled)" in proc.stdout
    assert re.search(r"^    GEMM +\d+\.\d+ ms", proc.stdout, re.M), proc.stdout
    assert (
        len(re.findall(r"^ +\d+ +[08] +\d+\.\d+ +\d+\.\d+ +\d+\.\d+$", proc.stdout.split("fp8 against")[1], re.M)) == 4
    )


def _gpu_kernels_module():
    spec = importlib.util.spec_from_file_location("gpu_kernels", ROOT / "benchmarks" / "gpu_kernels.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_kernels"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_agreement_counts_near_ties_and_nothing_else() -> None:
    gpu_kernels = _gpu_kernels_module()
    reference = torch.randn(200, 1000, generator=torch.Generator().manual_seed(0)) * 4
    assert gpu_kernels.agreement(reference, reference) == (1.0, 1.0)
    top2 = reference.topk(2, dim=-1)
    swapped = reference.clone()  # our pick is transformers' second choice
    swapped.scatter_(-1, top2.indices[:, 1:], top2.values[:, :1] + 1)
    close = (top2.values[:, 0] - top2.values[:, 1] <= gpu_kernels.NEAR_TIE).float().mean().item()
    assert gpu_kernels.agreement(swapped, reference) == (0.0, close)
    assert close < 0.5
    unrelated = torch.randn(200, 1000, generator=torch.Generator().manual_seed(1))
    assert gpu_kernels.agreement(unrelated, reference)[1] < 0.05


def test_low_agreement_fails_the_script(monkeypatch, capsys) -> None:
    gpu_kernels = _gpu_kernels_module()
    monkeypatch.setattr(gpu_kernels, "bench_verify_pass", lambda *args: 0.9)
    monkeypatch.setattr(sys, "argv", ["gpu_kernels.py", "--smoke", "--skip-kernels"])
    with pytest.raises(SystemExit) as exited:
        gpu_kernels.main()
    assert "agrees with transformers on 90.0% of rows" in str(exited.value.code)


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
