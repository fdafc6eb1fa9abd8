"""Token trees against chains at the same number of verified rows, in-process, side by side.

Each configuration drafts at most K tokens a round (a chain of K, or a tree of K tokens with at most
--widths branches per token), adaptive K off, so every round verifies the same rows at most; one prompt
at a time, the bench's prompts, greedy (or sampled with a seed: --temperature). The drafter is
--method: n-grams, suffix decoding, a draft model or an EAGLE-3 head (--drafter DIR: their EAGLE-2
top-k trees). Per workload: tokens per target pass (output tokens / rounds),
rows per pass (1 + drafted tokens / rounds: a tree fills its budget more often than a chain, which
stops where its one continuation does), tokens per second, and whether the output equals K=0's.

Usage: python benchmarks/token_trees.py [--model default] [--method ngram|suffix|draft_model|eagle3]
                                        [--drafter DIR] [--k 8] [--widths 1,2,3]
                                        [--workloads code_edit,summarise,chat] [--prompts-per-workload 3]
                                        [--max-tokens 96] [--temperature 0]
"""

from __future__ import annotations

import argparse
import time

from splitspec import LLM, SamplingParams
from splitspec.entrypoints.bench.workloads import build_prompts


def run(llm: LLM, prompts: list[str], params: SamplingParams) -> tuple[list[list[int]], int, int, float]:
    """(outputs, rounds, drafted tokens, seconds) of the prompts one at a time."""
    outputs, rounds, drafted, seconds = [], 0, 0, 0.0
    for prompt in prompts:
        started = time.perf_counter()
        out = llm.generate(prompt, params, use_tqdm=False)[0]
        seconds += time.perf_counter() - started
        outputs.append(out.outputs[0].token_ids)
        rounds += out.spec_stats.num_rounds if out.spec_stats.num_rounds else len(out.outputs[0].token_ids)
        drafted += out.spec_stats.num_draft_tokens
    return outputs, rounds, drafted, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--widths", default="1,2,3")
    parser.add_argument("--workloads", default="code_edit,summarise,chat")
    parser.add_argument("--prompts-per-workload", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--method", choices=["ngram", "suffix", "draft_model", "eagle3"], default="ngram")
    parser.add_argument("--drafter", help="the draft model's or EAGLE-3 head's directory")
    parser.add_argument("--temperature", type=float, default=0.0, help="sample (seed 0) instead of greedy")
    args = parser.parse_args()
    params = SamplingParams(temperature=args.temperature, seed=0, max_tokens=args.max_tokens)
    method = args.method
    if (method in ("draft_model", "eagle3")) != bool(args.drafter):
        parser.error("--drafter DIR goes with --method draft_model or eagle3, and only with them")
    workloads = args.workloads.split(",")
    prompts = {w: [p.text for p in build_prompts([w], args.prompts_per_workload, seed=0)] for w in workloads}
    llms = {"K=0": LLM(args.model)}
    for width in [int(w) for w in args.widths.split(",")]:
        spec = {"method": method, "num_speculative_tokens": args.k, "adaptive": False, "tree_width": width}
        if args.drafter:
            spec["model"] = args.drafter
        llms[f"{method} K={args.k} " + ("chain" if width == 1 else f"tree width {width}")] = LLM(
            args.model, speculative_config=spec
        )
    for llm in llms.values():  # warm up: first passes of each shape
        llm.generate(prompts[workloads[0]][0], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    print(
        f"{'workload':<11} {'configuration':<30} {'tok/pass':>8} {'rows/pass':>9} {'tok/s':>7} {'x chain':>8}  same as K=0"
    )
    for workload in workloads:
        reference, chain_rate = None, None
        for name, llm in llms.items():
            outputs, rounds, drafted, seconds = run(llm, prompts[workload], params)
            reference = reference or outputs
            tokens = sum(len(o) for o in outputs)
            per_pass = tokens / rounds
            if name.endswith("chain"):
                chain_rate = per_pass
            ratio = f"{per_pass / chain_rate:8.2f}" if chain_rate and name != "K=0" else f"{'-':>8}"
            same = sum(o == r for o, r in zip(outputs, reference))
            rows = 1 + drafted / rounds
            print(
                f"{workload:<11} {name:<30} {per_pass:8.2f} {rows:9.1f} {tokens / seconds:7.1f} {ratio}  "
                f"{same}/{len(outputs)}"
            )


if __name__ == "__main__":
    main()
