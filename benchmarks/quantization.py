"""Each quantization of a target beside float32: how far its greedy output drifts from float32's on the
bench prompts (tokens that match before the first difference), its plain decoding speed, and the
cost of a verify pass by rows, and the time to the first token of a long prompt.

Usage: python benchmarks/quantization.py [--model default] [--quantizations gguf,int8,int4]
       [--workloads code_edit,summarise,chat] [--prompts-per-workload 3] [--max-tokens 128]
       [--prompt-tokens 1000]
"""

from __future__ import annotations

import argparse
import time

from splitspec import LLM, SamplingParams
from splitspec.adaptive_k import PassCostModel
from splitspec.entrypoints.bench.workloads import build_prompts


def _prompts(llm: LLM, workloads: list[str], per_workload: int) -> list[tuple[str, list[int]]]:
    tokenizer = llm.get_tokenizer()
    return [
        (p.workload, tokenizer.encode(llm.apply_chat_template([{"role": "user", "content": p.text}])))
        for p in build_prompts(workloads, per_workload, 0)
    ]


def _decode(llm: LLM, prompts: list[tuple[str, list[int]]], max_tokens: int) -> tuple[list[list[int]], float]:
    """Greedy outputs, one prompt at a time, and tokens per second over all of them."""
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    llm.generate([{"prompt_token_ids": prompts[0][1]}], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    outputs, tokens, started = [], 0, time.perf_counter()
    for _, ids in prompts:
        out = llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)[0].outputs[0].token_ids
        outputs.append(out)
        tokens += len(out)
    return outputs, tokens / (time.perf_counter() - started)


def _first_token_seconds(llm: LLM, prompts: list[tuple[str, list[int]]], length: int) -> float:
    """Best of three: the bench prompts' tokens, repeated and cut to `length`, to one generated token."""
    ids = [t for _, p in prompts for t in p]
    ids = (ids * (length // len(ids) + 1))[:length]
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        llm.generate([{"prompt_token_ids": ids}], SamplingParams(temperature=0, max_tokens=1), use_tqdm=False)
        best = min(best, time.perf_counter() - started)
    return best


def _matching(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("--quantizations", default="gguf,int8,int4")
    parser.add_argument("--workloads", default="code_edit,summarise,chat")
    parser.add_argument("--prompts-per-workload", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--pass-rows", type=int, default=16, help="verify-pass cost measured up to this many rows")
    parser.add_argument("--prompt-tokens", type=int, default=1000, help="the long prompt's length, for the first token")
    args = parser.parse_args()
    names = [None, *(q for q in args.quantizations.split(",") if q)]
    reference: list[list[int]] | None = None
    print(
        f"{'quantization':<14}{'K=0 tok/s':>10}{'same as float32 (tokens before the first difference, per prompt)':>70}"
    )
    for quantization in names:
        llm = LLM(args.model, quantization=quantization)
        prompts = _prompts(llm, args.workloads.split(","), args.prompts_per_workload)
        outputs, rate = _decode(llm, prompts, args.max_tokens)
        reference = reference or outputs
        same = [_matching(o, r) for o, r in zip(outputs, reference)]
        identical = sum(o == r for o, r in zip(outputs, reference))
        cost = PassCostModel.calibrate(llm.runner, args.pass_rows, repeats=5)
        passes = " ".join(f"{r}:{s * 1000:.1f}" for r, s in zip(cost.rows, cost.seconds)) if cost else "-"
        first = _first_token_seconds(llm, prompts, args.prompt_tokens)
        print(
            f"{quantization or 'float32':<14}{rate:>10.1f}   identical {identical}/{len(same)}, mean {sum(same) / len(same):.0f}"
            f" of {args.max_tokens}: {same}\n{'':<14}pass ms by rows {passes}"
            f"\n{'':<14}first token of a {args.prompt_tokens}-token prompt: {first:.2f} s",
            flush=True,
        )
        del llm


if __name__ == "__main__":
    main()
