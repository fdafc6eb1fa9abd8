"""Each Triton kernel against its PyTorch reference on fresh random inputs (CPU: TRITON_INTERPRET=1).

Tolerances per dtype: fp32 1e-5 relative (the kernel computes in fp32 with IEEE dot products);
fp16 2e-3 and bf16 2e-2 (inputs rounded to 11 / 8 significant bits; softmax in fp32 in both).
Outputs are poisoned with NaN before each run, so an element the kernel never wrote fails, and NaN
never compares equal.
"""

from __future__ import annotations

import random

import pytest
import torch
from paged_layouts import _layout

from splitspec import draft_tree
from splitspec_kernels.dispatch import KernelUnavailable, select_kernels
from splitspec_kernels.paged_attention import (
    AttentionBatch,
    paged_attention_reference,
    paged_attention_triton,
    write_kv_cache_reference,
    write_kv_cache_triton,
)
from splitspec_kernels.triton_support import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="Triton is not installed")

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


CASES = [
    # (context lens, query lens, q heads, kv heads, head dim, block size)
    ([0], [1], 4, 4, 64, 16),  # first token
    ([37], [1], 8, 2, 64, 16),  # decode, GQA 4
    ([15, 16, 17], [5, 9, 1], 8, 1, 32, 16),  # verify K+1, lengths on both sides of a block edge, GQA 8
    ([0, 40], [33, 6], 4, 4, 64, 8),  # a prefill chunk beside a verify step, GQA 1
    ([100, 3, 64], [2, 20, 9], 16, 2, 128, 16),  # Llama-8B head dim, GQA 8
    ([50, 7], [11, 1], 9, 3, 64, 16),  # the default model's heads: GQA 3, tiles that split a query row's group
]


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_paged_attention_matches_reference(case: int, dtype: torch.dtype, splits: int) -> None:
    """splits: the keys split into parts merged after (flash-decoding), as on a GPU at small batches."""
    context_lens, query_lens, q_heads, kv_heads, head_dim, block_size = CASES[case]
    rng = random.Random(case)
    generator = torch.Generator().manual_seed(case)
    num_blocks = sum(-(-(c + q) // block_size) for c, q in zip(context_lens, query_lens)) + 5
    tables, seq_lens, slots = _layout(rng, context_lens, query_lens, block_size, num_blocks)
    batch = AttentionBatch.build(tables, seq_lens, query_lens, slots)
    cache_shape = (num_blocks, block_size, kv_heads, head_dim)
    key_cache = torch.randn(cache_shape, generator=generator).to(dtype)
    value_cache = torch.randn(cache_shape, generator=generator).to(dtype)
    query = torch.randn(sum(query_lens), q_heads, head_dim, generator=generator).to(dtype)
    scale = head_dim**-0.5

    want = paged_attention_reference(query.float(), key_cache.float(), value_cache.float(), batch, scale)
    got = paged_attention_triton(
        query, key_cache, value_cache, batch, scale, out=torch.full_like(query, float("nan")), num_splits=splits
    )

    assert got.dtype == dtype and got.shape == query.shape
    assert not got.isnan().any(), "an output element was never written"
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)
    same_dtype_reference = paged_attention_reference(query, key_cache, value_cache, batch, scale)
    torch.testing.assert_close(got.float(), same_dtype_reference.float(), rtol=2 * tol, atol=2 * tol)


@pytest.mark.parametrize("splits", [1, 2, 5])
@pytest.mark.parametrize("window", [1, 4, 13])
def test_paged_attention_sliding_window(window: int, splits: int) -> None:
    rng = random.Random(window)
    generator = torch.Generator().manual_seed(window)
    context_lens, query_lens, block_size = [30, 5], [4, 12], 8
    num_blocks = 12
    tables, seq_lens, slots = _layout(rng, context_lens, query_lens, block_size, num_blocks)
    batch = AttentionBatch.build(tables, seq_lens, query_lens, slots, sliding_window=window)
    key_cache = torch.randn(num_blocks, block_size, 2, 32, generator=generator)
    value_cache = torch.randn(num_blocks, block_size, 2, 32, generator=generator)
    query = torch.randn(sum(query_lens), 4, 32, generator=generator)
    want = paged_attention_reference(query, key_cache, value_cache, batch, 0.2)
    got = paged_attention_triton(
        query, key_cache, value_cache, batch, 0.2, out=torch.full_like(query, float("nan")), num_splits=splits
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _tree_rows(rng: random.Random, before: int, nodes: int) -> list[int]:
    """Parents of a sequence's new tokens: `before` in a chain, then a random tree of `nodes` below the last."""
    tree = [rng.randrange(-1, i) for i in range(nodes)]
    return draft_tree.chain(before) + [before - 1 if p == -1 else before + p for p in tree]


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize(
    ("context_lens", "fed", "window"),
    [
        ([20, 9, 31], [(1, 8), (4, 0), (2, 13)], None),  # verify steps with trees beside a chain, GQA 3
        ([5, 40], [(1, 63), (3, 12)], None),  # 64 new tokens: every bit of a row's int64
        ([5, 40], [(1, 70), (3, 12)], None),  # past 64: the reference attends it
        ([30, 12], [(1, 9), (2, 5)], 6),  # a sliding window: the reference too
    ],
)
def test_paged_attention_over_token_trees_matches_reference(context_lens, fed, window, splits) -> None:
    """Each new token of a tree sees the context, the tokens fed before the tree and its own ancestors."""
    rng = random.Random(len(fed[0]) * 100 + fed[0][1])
    generator = torch.Generator().manual_seed(7)
    query_lens = [before + nodes for before, nodes in fed]
    num_blocks = sum(-(-(c + q) // 8) for c, q in zip(context_lens, query_lens)) + 3
    tables, seq_lens, slots = _layout(rng, context_lens, query_lens, 8, num_blocks)
    trees = {}
    for b, (before, nodes) in enumerate(fed):
        if nodes:
            parents = _tree_rows(rng, before, nodes)
            positions = torch.tensor([context_lens[b] + d - 1 for d in draft_tree.depths(parents)])
            trees[b] = (draft_tree.ancestors_mask(parents), positions)
    batch = AttentionBatch.build(tables, seq_lens, query_lens, slots, sliding_window=window, trees=trees)
    key_cache = torch.randn(num_blocks, 8, 2, 32, generator=generator)
    value_cache = torch.randn(num_blocks, 8, 2, 32, generator=generator)
    query = torch.randn(sum(query_lens), 6, 32, generator=generator)
    want = paged_attention_reference(query, key_cache, value_cache, batch, 0.2)
    got = paged_attention_triton(
        query, key_cache, value_cache, batch, 0.2, out=torch.full_like(query, float("nan")), num_splits=splits
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    causal = AttentionBatch.build(tables, seq_lens, query_lens, slots, sliding_window=window)
    assert not torch.allclose(got, paged_attention_reference(query, key_cache, value_cache, causal, 0.2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kv_heads,head_dim", [(1, 64), (2, 128), (3, 48)])
def test_write_kv_cache_matches_reference(dtype: torch.dtype, kv_heads: int, head_dim: int) -> None:
    rng = random.Random(head_dim)
    generator = torch.Generator().manual_seed(kv_heads)
    block_size, num_blocks = 16, 9
    _, _, slots = _layout(rng, [3, 20, 0], [4, 1, 17], block_size, num_blocks)
    slot_mapping = torch.tensor(slots)
    key = torch.randn(len(slots), kv_heads, head_dim, generator=generator).to(dtype)
    value = torch.randn(len(slots), kv_heads, head_dim, generator=generator).to(dtype)
    caches = {}
    for name, write in (("reference", write_kv_cache_reference), ("triton", write_kv_cache_triton)):
        key_cache = torch.full((num_blocks, block_size, kv_heads, head_dim), float("nan"), dtype=dtype)
        value_cache = torch.full_like(key_cache, float("nan"))
        write(key, value, key_cache, value_cache, slot_mapping)
        caches[name] = (key_cache, value_cache)
    for got, want in zip(caches["triton"], caches["reference"]):
        assert torch.equal(got.isnan(), want.isnan()), "the kernel wrote a slot it was not given, or missed one"
        written = ~want.isnan()
        assert torch.equal(got[written], want[written])  # a copy: bit for bit
    flat = caches["triton"][0].view(-1, kv_heads, head_dim)
    assert torch.equal(flat[slot_mapping], key)


def test_dispatch_picks_reference_on_cpu_and_refuses_unknown_backends() -> None:
    assert select_kernels("auto", "cpu").name == "torch"
    assert select_kernels("torch", "cpu").paged_attention is paged_attention_reference
    with pytest.raises(KernelUnavailable, match="kernel backend must be one of"):
        select_kernels("flash", "cpu")


def test_forced_triton_on_cpu_needs_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(KernelUnavailable, match="TRITON_INTERPRET=1"):
        select_kernels("triton", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert select_kernels("triton", "cpu").paged_attention is paged_attention_triton


def test_context_splits_fill_the_gpu_only_where_a_pass_is_small(monkeypatch: pytest.MonkeyPatch) -> None:
    """About four programs per multiprocessor (an H100 has 132), as a power of two; never on the CPU."""
    import splitspec_kernels.paged_attention
    from splitspec_kernels.paged_attention import context_splits

    monkeypatch.setattr(splitspec_kernels.paged_attention, "_multiprocessors", lambda device: 132)
    cuda = torch.device("cuda")
    assert [context_splits(n, cuda) for n in (1, 32, 144, 288, 1024, 4096)] == [32, 16, 4, 2, 1, 1]
    assert context_splits(1, torch.device("cpu")) == 1
