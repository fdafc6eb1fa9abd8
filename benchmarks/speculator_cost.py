"""Milliseconds an MLP speculator takes to draft, in float32 and bfloat16, beside one target decode step.

Usage: python benchmarks/speculator_cost.py SPECULATOR_DIR [--model default] [--batch 1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from proposer_svc.mlp_speculator import MLPSpeculator
from splitspec.adaptive_k import PassCostModel
from splitspec.checkpoint import resolve_checkpoint
from splitspec.models.loader import load_runner


def _milliseconds(run, repeats: int = 50) -> float:
    for _ in range(5):
        run()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("speculator", type=Path)
    parser.add_argument("--model", default="default")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    runner = load_runner(resolve_checkpoint(args.model))
    step = PassCostModel.calibrate(runner, 1).seconds[0] * 1000
    print(f"target decode step: {step:.1f} ms")
    hidden = torch.randn(args.batch, runner.hidden)
    last = torch.randint(0, runner.vocab_size, (args.batch,))
    for dtype in (torch.float32, torch.bfloat16):
        speculator = MLPSpeculator(args.speculator, dtype=dtype)
        for n in range(1, speculator.n_predict + 1):
            ms = _milliseconds(lambda: speculator.greedy_drafts(hidden, last, n))
            print(
                f"{str(dtype).removeprefix('torch.'):>9}, {n} draft tokens, batch {args.batch}: {ms:6.2f} ms ({ms / step:.2f} of a step)"
            )


if __name__ == "__main__":
    main()
