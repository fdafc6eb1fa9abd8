"""The attention quantized CPU targets use (paged_attention_rowwise: every row the same in every pass)
beside SDPA (paged_attention_reference), per layer, on the default model's head layout (15 query
heads in 5 KV groups, head dimension 64) over a shuffled paged cache: decode steps, verify steps and a
prompt. Best of four runs of each.

Usage: python benchmarks/rowwise_attention.py
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import torch

from splitspec_kernels.paged_attention import AttentionBatch, paged_attention_reference, paged_attention_rowwise

BLOCK_SIZE, NUM_BLOCKS, KV_HEADS, GROUP, HEAD_DIM = 16, 700, 5, 3, 64
SHAPES = [  # name, context before the pass per sequence, new rows per sequence
    ("decode, 1 stream at 150", [150], [1]),
    ("decode, 1 stream at 1000", [1000], [1]),
    ("decode, 8 streams at 300", [300] * 8, [1] * 8),
    ("verify 9 rows, 1 stream at 300", [300], [9]),
    ("verify 9 rows, 4 streams at 300", [300] * 4, [9] * 4),
    ("prompt of 1200 tokens", [0], [1200]),
]


def _batch(rng: random.Random, contexts: list[int], new: list[int]) -> AttentionBatch:
    free = rng.sample(range(NUM_BLOCKS), NUM_BLOCKS)
    tables, seq_lens, slots = [], [], []
    for context, rows in zip(contexts, new):
        table = [free.pop() for _ in range(-(-(context + rows) // BLOCK_SIZE))]
        tables.append(table)
        seq_lens.append(context + rows)
        slots += [table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in range(context, context + rows)]
    return AttentionBatch.build(tables, seq_lens, new, slots)


def _seconds(
    attention: Callable[..., torch.Tensor],
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    batch: AttentionBatch,
) -> float:
    attention(query, key_cache, value_cache, batch, HEAD_DIM**-0.5)
    repeats = 3 if batch.max_query_len > 100 else 30
    best = float("inf")
    for _ in range(4):
        started = time.perf_counter()
        for _ in range(repeats):
            attention(query, key_cache, value_cache, batch, HEAD_DIM**-0.5)
        best = min(best, (time.perf_counter() - started) / repeats)
    return best


def main() -> None:
    rng = random.Random(0)
    key_cache = torch.randn(NUM_BLOCKS, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    value_cache = torch.randn(NUM_BLOCKS, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    print(f"{'one layer':<34}{'rowwise ms':>12}{'SDPA ms':>10}{'ratio':>8}")
    for name, contexts, new in SHAPES:
        batch = _batch(rng, contexts, new)
        query = torch.randn(sum(new), KV_HEADS * GROUP, HEAD_DIM)
        rowwise = _seconds(paged_attention_rowwise, query, key_cache, value_cache, batch)
        sdpa = _seconds(paged_attention_reference, query, key_cache, value_cache, batch)
        print(f"{name:<34}{rowwise * 1e3:>12.3f}{sdpa * 1e3:>10.3f}{rowwise / sdpa:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
