"""Seconds per target forward pass by tokens in the pass, as the engine's adaptive K measures it.

Usage: python benchmarks/pass_cost.py [--model default] [--max-rows 16]
"""

from __future__ import annotations

import argparse

from splitspec.adaptive_k import PassCostModel
from splitspec.checkpoint import resolve_checkpoint
from splitspec.models.loader import load_runner


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("--max-rows", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    runner = load_runner(resolve_checkpoint(args.model))
    model = PassCostModel.calibrate(runner, args.max_rows, repeats=args.repeats)
    first = model.seconds[0]
    for rows, seconds in zip(model.rows, model.seconds):
        print(f"{rows:>4} tokens: {seconds * 1000:7.1f} ms  ({seconds / first:.2f}x one token)")


if __name__ == "__main__":
    main()
