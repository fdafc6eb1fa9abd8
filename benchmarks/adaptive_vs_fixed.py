"""Adaptive vs fixed draft length vs no speculation, interleaved per prompt, batch 1, greedy.

Usage: python benchmarks/adaptive_vs_fixed.py [--model default] [-k 5] [--max-tokens 96] [--per-workload 2]
"""

from __future__ import annotations

import argparse
import time

from splitspec import LLM, SamplingParams
from splitspec.entrypoints.bench.workloads import WORKLOADS, build_prompts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--per-workload", type=int, default=2)
    args = parser.parse_args()

    configs = {
        "K=0": LLM(args.model),
        "adaptive": LLM(args.model, speculative_config={"method": "ngram", "num_speculative_tokens": args.k}),
        "fixed": LLM(
            args.model, speculative_config={"method": "ngram", "num_speculative_tokens": args.k, "adaptive": False}
        ),
    }
    base = configs["K=0"]
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    totals = {name: [0, 0.0] for name in configs}
    for prompt in build_prompts(list(WORKLOADS), args.per_workload, seed=0):
        text = base.apply_chat_template([{"role": "user", "content": prompt.text}])
        row = []
        for name, llm in configs.items():
            start = time.perf_counter()
            out = llm.generate([text], params, use_tqdm=False)[0]
            elapsed = time.perf_counter() - start
            n = len(out.outputs[0].token_ids)
            totals[name][0] += n
            totals[name][1] += elapsed
            row.append(f"{name} {n / elapsed:5.1f} tok/s ({out.spec_stats.mean_accepted_tokens_per_round:.2f}/pass)")
        print(f"{prompt.workload:<10}", " | ".join(row))
    for name, (n, elapsed) in totals.items():
        print(f"{name}: {n / elapsed:.1f} tok/s")


if __name__ == "__main__":
    main()
