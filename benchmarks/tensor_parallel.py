"""Tokens per second and each rank's resident memory with the target on one rank and on N.

Every size runs greedy, batch 1, K=0 on the same prompts, one after another in this process; a
rank's weights are its shard, so its memory should fall as N grows. On a CPU the ranks share the
cores (each rank gets cores / N threads), so this measures the split, not a speed-up.

Usage: python benchmarks/tensor_parallel.py [--model default] [--sizes 1,3] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import gc
import os
import time

from splitspec import LLM, SamplingParams
from splitspec.errors import SplitspecError

PROMPTS = ["Write a Python function to calculate fibonacci numbers.", "Explain what a hash map is."]


def resident_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def weight_mib(llm: LLM) -> float:
    runner = llm.runner
    tensors = [runner.embed, runner.norm] + ([] if runner.lm_head.weight is runner.embed else [runner.lm_head.weight])
    for layer in runner.layers:
        tensors += [layer.qkv.weight, layer.o.weight, layer.gate_up.weight, layer.down.weight, layer.post_norm]
    return sum(t.numel() * t.element_size() for t in tensors) / (1 << 20)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("--sizes", default="1,3", help="comma-separated tensor_parallel_size values")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    print(f"model {args.model}, greedy, batch 1, K=0, {args.max_tokens} tokens per prompt, {os.cpu_count()} cores")
    print("  size   tok/s   weights MiB per rank   KV cache MiB per rank   resident MiB per rank (rank 0 first)")
    for size in (int(s) for s in args.sizes.split(",")):
        try:
            llm = LLM(args.model, tensor_parallel_size=size)
        except SplitspecError as exc:
            print(f"  {size:>4}   refused: {exc}")
            continue
        prompts = [llm.apply_chat_template([{"role": "user", "content": p}]) for p in PROMPTS]
        llm.generate(prompts[:1], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)  # warm-up
        start = time.perf_counter()
        tokens = 0
        for prompt in prompts:
            tokens += len(llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids)
        rate = tokens / (time.perf_counter() - start)
        workers = llm.runner.workers.processes if llm.runner.workers else []
        memory = [resident_mib(os.getpid())] + [resident_mib(p.pid) for p in workers]
        kv = llm.runner.kv_cache_bytes / (1 << 20)
        resident = ", ".join(f"{m:.0f}" for m in memory)
        print(f"  {size:>4}   {rate:5.1f}   {weight_mib(llm):20.0f}   {kv:21.0f}   {resident}")
        llm.close()
        del llm
        gc.collect()


if __name__ == "__main__":
    main()
