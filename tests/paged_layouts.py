"""Paged-KV block tables for the attention kernels' tests: each sequence's blocks shuffled and
non-contiguous, as a long-running cache leaves them."""

from __future__ import annotations

import random


def _layout(rng: random.Random, context_lens: list[int], query_lens: list[int], block_size: int, num_blocks: int):
    """Shuffled, non-contiguous blocks for each sequence; returns tables, seq lens and token slots."""
    free = list(range(num_blocks))
    rng.shuffle(free)
    tables, seq_lens, slots = [], [], []
    for context, new in zip(context_lens, query_lens):
        total = context + new
        table = [free.pop() for _ in range(-(-total // block_size))]
        tables.append(table)
        seq_lens.append(total)
        slots += [table[p // block_size] * block_size + p % block_size for p in range(context, total)]
    return tables, seq_lens, slots
