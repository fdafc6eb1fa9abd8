"""paged_attention_rowwise: every row of any pass equals that row attended alone, bit for bit.

Quantized targets on the CPU attend with it so that a verify pass of K+1 rows, a prompt and a
one-token decode step compute each token's attention identically (speculation is then exactly plain
decoding); these properties are what that rests on.
"""

from __future__ import annotations

import random

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from paged_layouts import _layout

from splitspec_kernels.paged_attention import AttentionBatch, paged_attention_reference, paged_attention_rowwise

BLOCK_SIZE = 16


@st.composite
def passes(draw: st.DrawFn) -> tuple:
    """A pass of 1-4 sequences: decodes, verify steps, prompt chunks (some longer than one chunk of
    rows and of keys), GQA, an optional sliding window."""
    num_seqs = draw(st.integers(1, 4))
    context_lens = draw(st.lists(st.integers(0, 600), min_size=num_seqs, max_size=num_seqs))
    query_lens = draw(st.lists(st.sampled_from([1, 1, 2, 5, 9, 17, 40, 300]), min_size=num_seqs, max_size=num_seqs))
    kv_heads, group = draw(st.sampled_from([(1, 1), (2, 3), (5, 3), (2, 4)]))
    head_dim = draw(st.sampled_from([32, 64]))
    window = draw(st.sampled_from([None, None, 7, 100]))
    return context_lens, query_lens, kv_heads, group, head_dim, window, draw(st.integers(0, 2**16))


def _batch(tables, seq_lens, query_lens, slots, window) -> AttentionBatch:
    return AttentionBatch.build(tables, seq_lens, query_lens, slots, sliding_window=window)


@settings(max_examples=40, deadline=None)
@given(passes())
def test_each_row_equals_the_row_attended_alone_and_the_reference(case: tuple) -> None:
    context_lens, query_lens, kv_heads, group, head_dim, window, seed = case
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    num_blocks = sum(-(-(c + q) // BLOCK_SIZE) for c, q in zip(context_lens, query_lens)) + 3
    tables, seq_lens, slots = _layout(rng, context_lens, query_lens, BLOCK_SIZE, num_blocks)
    key_cache = torch.randn(num_blocks, BLOCK_SIZE, kv_heads, head_dim, generator=generator)
    value_cache = torch.randn(num_blocks, BLOCK_SIZE, kv_heads, head_dim, generator=generator)
    unwritten = torch.ones(num_blocks * BLOCK_SIZE, dtype=torch.bool)
    unwritten[
        [t[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for t, n in zip(tables, seq_lens) for p in range(n)]
    ] = False
    for cache in (key_cache, value_cache):  # slots no sequence owns hold what others left: never weighed
        cache.view(-1, kv_heads, head_dim)[unwritten] = 1e6
    query = torch.randn(sum(query_lens), kv_heads * group, head_dim, generator=generator)
    batch = _batch(tables, seq_lens, query_lens, slots, window)

    got = paged_attention_rowwise(query, key_cache, value_cache, batch, 0.125)

    want = paged_attention_reference(query, key_cache, value_cache, batch, 0.125)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    row = 0
    for table, total, new in zip(tables, seq_lens, query_lens):
        for r in rng.sample(range(new), min(new, 3)):
            seen = total - new + r + 1
            alone = _batch([table[: -(-seen // BLOCK_SIZE)]], [seen], [1], [slots[row + r]], window)
            one = paged_attention_rowwise(query[row + r : row + r + 1], key_cache, value_cache, alone, 0.125)
            assert torch.equal(got[row + r], one[0]), f"row {r} of a {new}-row query at {seen} keys"
        row += new
