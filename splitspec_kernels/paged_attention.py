"""Attention of ragged multi-token queries against a paged KV cache, and the KV cache write.

Each operation has a plain-PyTorch reference and a Triton kernel with the same signature:
`paged_attention_reference` / `paged_attention_triton` and `write_kv_cache_reference` /
`write_kv_cache_triton`. `splitspec_kernels.dispatch` picks one per device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache, cached_property

import torch
import torch.nn.functional as F

from splitspec_kernels.triton_support import interpreting, tl, triton

TREE_BITS = 64
"""The most new tokens a sequence with a tree may have for the Triton kernel (one int64 of bits per row)."""


@dataclass
class AttentionBatch:
    """Layout of one forward pass, shared by every layer.

    Sequence b owns query rows [query_start[b], query_start[b + 1]) of the flattened tokens; its
    keys are the first seq_lens[b] slots reached through block_tables[b], the last query_lens[b] of
    which are the new tokens themselves (so attention is causal inside the new tokens and full over
    the cached context).
    """

    block_tables: torch.Tensor  # [batch, max_blocks] int64, padded with 0
    seq_lens: torch.Tensor  # [batch] int64: context length including the new tokens
    query_start: torch.Tensor  # [batch + 1] int64: cumulative query lengths
    query_lens: list[int]
    slot_mapping: torch.Tensor  # [num_tokens] int64 flat cache slot of each new token
    sliding_window: int | None = None
    trees: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    """Sequences whose new tokens end in a tree-shaped draft: index -> (which of its new tokens each new
    token sees [n, n] bool, their positions [n] int64). `mask` reads it (so the reference and row-by-row
    attention do); the Triton kernel reads `tree_bits` (trees_fit_bits)."""
    _rowwise_chunks: tuple[int, list["RowwiseChunk"]] | None = field(default=None, init=False, repr=False)

    @staticmethod
    def build(
        block_tables: list[list[int]],
        seq_lens: list[int],
        query_lens: list[int],
        slot_mapping: list[int],
        sliding_window: int | None = None,
        device: torch.device | str = "cpu",
        trees: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> "AttentionBatch":
        max_blocks = max(len(t) for t in block_tables)
        tables = torch.zeros(len(seq_lens), max_blocks, dtype=torch.int64)
        for b, table in enumerate(block_tables):
            tables[b, : len(table)] = torch.tensor(table, dtype=torch.int64)
        query_start = torch.tensor([0] + query_lens, dtype=torch.int64).cumsum(0)
        return AttentionBatch(
            block_tables=tables.to(device),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int64, device=device),
            query_start=query_start.to(device),
            query_lens=list(query_lens),
            slot_mapping=torch.tensor(slot_mapping, dtype=torch.int64, device=device),
            sliding_window=sliding_window,
            trees=trees or {},
        )

    @property
    def max_query_len(self) -> int:
        return max(self.query_lens)

    # The reference's padded layout, built once per pass and reused by every layer.

    @cached_property
    def reference_groups(self) -> list[tuple[torch.Tensor | None, "AttentionBatch"]]:
        """Sequences the reference attends together, with their query rows (None: all of them).

        The reference pads every sequence of a group to the group's longest query, so one prefill
        chunk beside many decodes would cost as many prefills: decodes (one query) form one group,
        verify steps (2-16 queries) another, and each longer chunk is a group of its own.
        """
        keys = [0 if n == 1 else 1 if n <= 16 else 2 + b for b, n in enumerate(self.query_lens)]
        if len(set(keys)) == 1:
            return [(None, self)]
        members: dict[int, list[int]] = {}
        for b, key in enumerate(keys):
            members.setdefault(key, []).append(b)
        starts = self.query_start.tolist()
        groups = []
        for seqs in members.values():
            rows = torch.cat([torch.arange(starts[b], starts[b + 1]) for b in seqs]).to(self.seq_lens.device)
            lens = [self.query_lens[b] for b in seqs]
            index = torch.tensor(seqs, device=self.seq_lens.device)
            sub = AttentionBatch(
                block_tables=self.block_tables[index],
                seq_lens=self.seq_lens[index],
                query_start=torch.tensor([0] + lens, dtype=torch.int64).cumsum(0).to(self.seq_lens.device),
                query_lens=lens,
                slot_mapping=self.slot_mapping[rows],
                sliding_window=self.sliding_window,
                trees={i: self.trees[b] for i, b in enumerate(seqs) if b in self.trees},
            )
            groups.append((rows, sub))
        return groups

    def rowwise_blocks(self, slots: int, block_size: int) -> torch.Tensor:
        """The flattened block tables, each cut or padded (with block 0) to `slots` slots."""
        count = -(-slots // block_size)
        tables = F.pad(self.block_tables, (0, max(0, count - self.block_tables.shape[1])))[:, :count]
        return tables.flatten()

    def rowwise_chunks(self, group: int) -> list["RowwiseChunk"]:
        """paged_attention_rowwise's layout for query heads in KV groups of `group`, made once per pass."""
        if self._rowwise_chunks is None or self._rowwise_chunks[0] != group:
            self._rowwise_chunks = (group, rowwise_chunks(self, group))
        return self._rowwise_chunks[1]

    @property
    def trees_fit_bits(self) -> bool:
        """Every tree's sequence has at most TREE_BITS new tokens and no sliding window applies (a tree's
        tokens sit at the positions of their depths, which the window would compare): the Triton kernel
        attends such trees through `tree_bits`."""
        return self.sliding_window is None and all(self.query_lens[b] <= TREE_BITS for b in self.trees)

    @cached_property
    def tree_bits(self) -> torch.Tensor:
        """[num_tokens] int64: bit j of a tree sequence's new token says whether it sees that sequence's
        new token j; -1 (every bit) for the rows of other sequences, which stay causal alone. Slots keep
        draft order and a parent comes before its children, so causal by slot and these bits together
        are the tree's mask."""
        bits = torch.full((int(self.query_start[-1]),), -1, dtype=torch.int64)
        starts = self.query_start.tolist()
        weights = torch.tensor([1 << j for j in range(TREE_BITS - 1)] + [-(1 << (TREE_BITS - 1))], dtype=torch.int64)
        for b, (sees, _) in self.trees.items():
            n = self.query_lens[b]
            bits[starts[b] : starts[b] + n] = (sees.to(torch.int64) * weights[:n]).sum(-1)
        return bits.to(self.seq_lens.device)

    @cached_property
    def query_valid(self) -> torch.Tensor:  # [batch, max_query_len] bool
        rows = torch.arange(self.max_query_len, device=self.seq_lens.device)
        lens_q = torch.tensor(self.query_lens, dtype=torch.int64, device=self.seq_lens.device)
        return rows[None, :] < lens_q[:, None]

    @cached_property
    def query_index(self) -> torch.Tensor:  # [batch, max_query_len] row of each padded query
        rows = torch.arange(self.max_query_len, device=self.seq_lens.device)
        index = self.query_start[:-1, None] + rows[None, :]
        return torch.where(self.query_valid, index, torch.zeros_like(index))

    @cached_property
    def mask(self) -> torch.Tensor:  # [batch, 1, max_query_len, max_seq_len] bool, True = may attend
        device = self.seq_lens.device
        lens_q = torch.tensor(self.query_lens, dtype=torch.int64, device=device)
        q_pos = (self.seq_lens - lens_q)[:, None] + torch.arange(self.max_query_len, device=device)[None, :]
        k_pos = torch.arange(int(self.seq_lens.max()), device=device)
        mask = (k_pos[None, None, :] <= q_pos[:, :, None]) & (k_pos[None, None, :] < self.seq_lens[:, None, None])
        key_pos = k_pos[None, :].expand(len(self.query_lens), -1)
        if self.trees:  # a tree's new tokens sit at the positions of their depths, not of their slots
            key_pos = key_pos.clone()
        for b, (sees, positions) in self.trees.items():
            n, context = self.query_lens[b], int(self.seq_lens[b]) - self.query_lens[b]
            mask[b, :n, context : context + n] = sees.to(device)
            key_pos[b, context : context + n] = q_pos[b, :n] = positions.to(device)
        if self.sliding_window is not None:
            mask &= key_pos[:, None, :] > q_pos[:, :, None] - self.sliding_window
        return mask[:, None]


# -- KV cache write --------------------------------------------------------------------------------


def write_kv_cache_reference(
    key: torch.Tensor,  # [num_tokens, kv_heads, head_dim]
    value: torch.Tensor,  # [num_tokens, kv_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, kv_heads, head_dim]
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [num_tokens] flat slot (block * block_size + offset) of each token
) -> None:
    key_cache.view(-1, *key_cache.shape[2:]).index_copy_(0, slot_mapping, key)
    value_cache.view(-1, *value_cache.shape[2:]).index_copy_(0, slot_mapping, value)


def write_kv_cache_triton(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    num_tokens, kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    key, value = key.contiguous(), value.contiguous()
    _write_kv_kernel[(num_tokens, kv_heads)](
        key, value, key_cache, value_cache, slot_mapping,
        kv_heads * head_dim, head_dim,
        HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim),
    )  # fmt: skip


if triton is not None:

    @triton.jit
    def _write_kv_kernel(
        key_ptr, value_ptr, key_cache_ptr, value_cache_ptr, slot_ptr,
        token_stride, head_stride,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        token = tl.program_id(0)
        head = tl.program_id(1)
        slot = tl.load(slot_ptr + token).to(tl.int64)
        d = tl.arange(0, BLOCK_D)
        in_dim = d < HEAD_DIM
        src = token.to(tl.int64) * token_stride + head * head_stride + d
        dst = slot * token_stride + head * head_stride + d
        tl.store(key_cache_ptr + dst, tl.load(key_ptr + src, mask=in_dim), mask=in_dim)
        tl.store(value_cache_ptr + dst, tl.load(value_ptr + src, mask=in_dim), mask=in_dim)


# -- attention -------------------------------------------------------------------------------------


def paged_attention_reference(
    query: torch.Tensor,  # [num_tokens, q_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, kv_heads, head_dim]
    value_cache: torch.Tensor,
    batch: AttentionBatch,
    scale: float,
    out: torch.Tensor | None = None,  # [num_tokens, q_heads, head_dim], written when given
) -> torch.Tensor:  # [num_tokens, q_heads, head_dim]
    """Per group of similar query lengths: gather each sequence's blocks into a padded tensor and
    run masked SDPA."""
    groups = batch.reference_groups
    if len(groups) == 1:
        result = _padded_attention(query, key_cache, value_cache, batch, scale)
    else:
        result = query.new_empty(query.shape)
        for rows, group in groups:
            result[rows] = _padded_attention(query[rows], key_cache, value_cache, group, scale)
    return result if out is None else out.copy_(result)


def _padded_attention(
    query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, batch: AttentionBatch, scale: float
) -> torch.Tensor:
    num_seqs, max_blocks = batch.block_tables.shape
    block_size = key_cache.shape[1]
    max_kv = int(batch.mask.shape[-1])
    blocks = batch.block_tables.flatten()  # index_select copies whole blocks: ~5x faster than indexing
    keys = key_cache.index_select(0, blocks).view(num_seqs, max_blocks * block_size, *key_cache.shape[2:])
    values = value_cache.index_select(0, blocks).view(num_seqs, max_blocks * block_size, *value_cache.shape[2:])
    keys = keys[:, :max_kv].transpose(1, 2)  # [batch, kv_heads, max_kv, head_dim]
    values = values[:, :max_kv].transpose(1, 2)
    queries = query[batch.query_index].transpose(1, 2)  # [batch, q_heads, max_q, head_dim]
    attended = F.scaled_dot_product_attention(
        queries, keys, values, attn_mask=batch.mask, scale=scale, enable_gqa=True
    )  # [batch, q_heads, max_q, head_dim]
    return attended.transpose(1, 2)[batch.query_valid]


_ROW_TILE = 8  # a KV head's (query row, query head) pairs are padded to a multiple of this
_KEY_CHUNK = 64  # keys are padded to a multiple of this; values are summed over chunks of it
_QUERY_CHUNK = 256  # query rows attended at once: bounds the scores' memory on long prompts
_HIDDEN = -1e30  # added to a score a row may not attend: finite, so padding rows of no keys stay finite
_LOWEST_EXPONENT = -87.0  # exp of less is subnormal in float32, which the CPU computes slowly


@dataclass
class RowwiseChunk:
    """Query rows [start, stop) of every sequence of a pass and the first `keys` slots they may see
    (padded), for one layout of query heads. A KV head's (row, query head) pairs are padded to `pairs`.
    Laid out [1, batch, keys / _KEY_CHUNK, pairs, _KEY_CHUNK]: bias is 0 where a pair may attend and a
    large negative number where not, keep 1.0 where it may and 0.0 where not."""

    start: int
    stop: int
    pairs: int
    keys: int
    bias: torch.Tensor
    keep: torch.Tensor


def rowwise_chunks(batch: AttentionBatch, group: int) -> list[RowwiseChunk]:
    """The chunks of paged_attention_rowwise for one group of a pass: built once, used by every layer."""
    first = (batch.seq_lens - torch.tensor(batch.query_lens, device=batch.seq_lens.device)).tolist()
    max_kv = int(batch.mask.shape[-1])
    chunks = []
    for start in range(0, batch.max_query_len, _QUERY_CHUNK):
        stop = min(batch.max_query_len, start + _QUERY_CHUNK)
        pairs = -(-(stop - start) * group // _ROW_TILE) * _ROW_TILE
        keys = -(-min(max_kv, max(f + stop for f in first)) // _KEY_CHUNK) * _KEY_CHUNK
        allowed = batch.mask[:, 0, start:stop, : min(keys, max_kv)].repeat_interleave(group, dim=1)
        allowed = F.pad(allowed, (0, keys - allowed.shape[-1], 0, pairs - allowed.shape[1]))[None]
        allowed = allowed.view(1, -1, pairs, keys // _KEY_CHUNK, _KEY_CHUNK).transpose(2, 3).contiguous()
        bias = torch.zeros(allowed.shape, device=allowed.device).masked_fill_(~allowed, _HIDDEN)
        keep = allowed.float()
        chunks.append(RowwiseChunk(start, stop, pairs, keys, bias, keep))
    return chunks


def paged_attention_rowwise(
    query: torch.Tensor,  # [num_tokens, q_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, kv_heads, head_dim]
    value_cache: torch.Tensor,
    batch: AttentionBatch,
    scale: float,
) -> torch.Tensor:  # [num_tokens, q_heads, head_dim]
    """Attention whose every row comes out bit for bit as it would in any other pass: a row of a
    K+1-token verify pass equals the one-token decode step at its position, and a prompt row equals the
    decode step that would have computed it (a sequence re-prefilled after a move).

    SDPA's sums differ in their last bits between passes of different shapes (they pad and block by
    the pass's shape); a target that rounds activations to bfloat16 turns that into a step of bfloat16
    and breaks near-ties differently (LlamaRunner uses this for quantized targets on the CPU). Here no
    sum depends on the pass. Keys are cut into chunks of _KEY_CHUNK (the last padded); each KV head's
    (query row, query head) pairs are padded to a multiple of _ROW_TILE. Every score is then a product
    of fixed shape over the head dimension; every chunk's weighted values are a product of fixed shape
    over its keys, and its weights' sum one over _KEY_CHUNK of them; and the chunks are added as a
    fixed pairwise tree (_tree_sum), to which the chunks past a row's last key add exact zeros. The
    maximum and the exponentials are elementwise. All in float32 matrix products: on long prompts
    within twice SDPA's time. tests/splitspec_kernels/test_rowwise_attention.py holds the property.
    """
    out = torch.empty_like(query)
    for rows, group in batch.reference_groups:
        attended = _rowwise_group(query if rows is None else query[rows], key_cache, value_cache, group, scale)
        if rows is None:
            return attended
        out[rows] = attended
    return out


def _rowwise_group(
    query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, batch: AttentionBatch, scale: float
) -> torch.Tensor:
    num_seqs = batch.block_tables.shape[0]
    block_size, kv_heads, head_dim = key_cache.shape[1:]
    group = query.shape[1] // kv_heads
    chunks = batch.rowwise_chunks(group)
    blocks = batch.rowwise_blocks(chunks[-1].keys, block_size)
    # [b, slots, kv, d], slots = chunks[-1].keys: those past a sequence's end hold what other sequences
    # left there (finite: the cache starts zeroed) and get weight 0
    keys = key_cache.index_select(0, blocks).view(num_seqs, -1, kv_heads, head_dim).float()
    values = value_cache.index_select(0, blocks).view(num_seqs, -1, kv_heads, head_dim).float()
    queries = query[batch.query_index].float() * scale
    queries = queries.view(num_seqs, batch.max_query_len, kv_heads, group, head_dim)
    attended = queries.new_empty(queries.shape)
    for chunk in chunks:
        rows = queries[:, chunk.start : chunk.stop]
        attended[:, chunk.start : chunk.stop] = _attend_rows(
            rows, keys[:, : chunk.keys], values[:, : chunk.keys], chunk
        )
    return attended.flatten(2, 3)[batch.query_valid].to(query.dtype)


def _attend_rows(
    queries: torch.Tensor,  # [b, rows, kv_heads, group, d], scaled
    keys: torch.Tensor,  # [b, chunk.keys, kv_heads, d]
    values: torch.Tensor,  # [b, chunk.keys, kv_heads, d]
    chunk: RowwiseChunk,
) -> torch.Tensor:  # [b, rows, kv_heads, group, d]
    """Scores, weights and weighted values of each KV head, laid out [b, key chunk, pair, key in chunk]."""
    num_seqs, rows, kv_heads, group, head_dim = queries.shape
    pairs, parts = rows * group, chunk.keys // _KEY_CHUNK
    q = queries.new_zeros(kv_heads, num_seqs, parts, chunk.pairs, head_dim)  # each KV head's (row, head) pairs
    q[:, :, :, :pairs] = queries.permute(2, 0, 1, 3, 4).reshape(kv_heads, num_seqs, 1, pairs, head_dim)
    q = q.view(kv_heads, num_seqs * parts, chunk.pairs, head_dim).unbind(0)
    # [b * parts, _KEY_CHUNK] per KV head: views, but in a prompt's early chunks
    keys = keys.reshape(num_seqs * parts, _KEY_CHUNK, kv_heads, head_dim).unbind(2)
    values = values.reshape(num_seqs * parts, _KEY_CHUNK, kv_heads, head_dim).unbind(2)
    weights = q[0].new_empty(kv_heads, num_seqs, parts, chunk.pairs, _KEY_CHUNK)
    by_head = weights.view(kv_heads, -1, chunk.pairs, _KEY_CHUNK).unbind(0)
    for head in range(kv_heads):  # one product per KV head reads its keys where they lie
        torch.bmm(q[head], keys[head].transpose(1, 2), out=by_head[head])
    weights += chunk.bias
    weights -= weights.amax(dim=(2, 4), keepdim=True)
    weights.clamp_min_(_LOWEST_EXPONENT).exp_()  # lower exponents would give subnormals, slowly
    weights *= chunk.keep
    summed = weights.new_empty(kv_heads, num_seqs, parts, chunk.pairs, head_dim)
    summed_by_head = summed.view(kv_heads, -1, chunk.pairs, head_dim).unbind(0)
    for head in range(kv_heads):
        torch.bmm(by_head[head], values[head], out=summed_by_head[head])
    summed = _tree_sum(torch.cat([summed, weights.sum(dim=-1, keepdim=True)], dim=-1))[:, :, :pairs]
    attended = summed[..., :head_dim] / summed[..., head_dim:]  # [kv, b, pairs, d]
    return attended.view(kv_heads, num_seqs, rows, group, head_dim).permute(1, 2, 0, 3, 4)


def _tree_sum(parts: torch.Tensor) -> torch.Tensor:
    """Sum over dim 2 as a pairwise tree, (0 + 1) + (2 + 3) and so on, over the parts padded with zero
    parts to a power of two: appending zero parts changes no sum, so a row's sum does not depend on
    how many keys the pass's longest sequence has."""
    count = parts.shape[2]
    parts = F.pad(parts, (0, 0, 0, 0, 0, (1 << (count - 1).bit_length()) - count))
    while parts.shape[2] > 1:
        parts = parts[:, :, 0::2] + parts[:, :, 1::2]
    return parts[:, :, 0]


_BLOCK_M = 16  # rows per program: query rows times the query heads of one KV head
_BLOCK_N = 32  # keys per inner step
_MAX_SPLITS = 32  # most parts one (sequence, head, tile)'s keys are split into


def context_splits(programs: int, device: torch.device) -> int:
    """How many parts to split each program's keys into so that a pass fills the GPU.

    One program per (sequence, KV head, tile of rows) leaves most of a big GPU idle at small batches:
    a single sequence with 8 KV heads is 8 programs on 132 multiprocessors, each reading the whole
    context alone. Split the keys (flash-decoding) until there are about four programs per
    multiprocessor; a pass with enough programs already is not split. Depends only on the pass's shape,
    never on its data, so a captured CUDA graph keeps its split; a power of two, so that few variants of
    the kernel are compiled.
    """
    if device.type != "cuda":
        return 1
    target = 4 * _multiprocessors(device)
    wanted = min(_MAX_SPLITS, -(-target // programs))
    return 1 << (wanted.bit_length() - 1)


@cache
def _multiprocessors(device: torch.device) -> int:
    """Asked once per device: every layer of every pass needs it."""
    return torch.cuda.get_device_properties(device).multi_processor_count


def paged_attention_triton(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    batch: AttentionBatch,
    scale: float,
    out: torch.Tensor | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """One program per (sequence, KV head, tile of 16 rows, part of the keys), where a row is one query
    row of one of the query heads sharing that KV head (grouped-query attention: Llama-3's 32 query heads
    read 8 KV heads): each key and value is read once for the whole group, not once per query head, and
    a decode or verify step's few query rows fill the tile's rows with the group's heads instead of
    padding. Online softmax in fp32 over the part's keys, 32 at a time, each key found through the block
    table. With more than one part (num_splits; default `context_splits`), each part writes its
    unnormalised sum with its max and denominator, and a second kernel merges the parts of each row.
    A sequence fed a tree (batch.trees) has each row's keys among its new tokens masked by
    batch.tree_bits; a tree too large for them, or beside a sliding window, goes to the reference."""
    if batch.trees and not batch.trees_fit_bits:
        return paged_attention_reference(query, key_cache, value_cache, batch, scale, out)
    num_tokens, q_heads, head_dim = query.shape
    _, block_size, kv_heads, _ = key_cache.shape
    query = query.contiguous()
    # rows of no sequence (a graph's padding) are written by no program: zeros, not whatever memory held,
    # which could be NaN and spread through the padding's later layers
    out = torch.zeros_like(query) if out is None else out
    # Triton's interpreter computes bf16 dot products wrongly (3.9.0); there both sides go up to fp32
    dot_in_fp32 = query.dtype == torch.bfloat16 and interpreting()
    num_seqs = batch.seq_lens.shape[0]
    group_size = q_heads // kv_heads
    tiles = triton.cdiv(batch.max_query_len * group_size, _BLOCK_M)
    splits = num_splits or context_splits(num_seqs * kv_heads * tiles, query.device)
    block_d = max(16, triton.next_power_of_2(head_dim))
    if splits > 1:  # per row, head and part: the sum (block_d wide), then max and denominator
        partial = torch.zeros(num_tokens, q_heads, splits, block_d + 2, dtype=torch.float32, device=query.device)
        partial[..., block_d] = float("-inf")  # rows no program writes merge to zeros
    else:
        partial = out  # not read
    _paged_attention_kernel[(num_seqs, kv_heads, tiles * splits)](
        query, key_cache, value_cache, out, partial,
        batch.block_tables, batch.seq_lens, batch.query_start,
        batch.tree_bits if batch.trees else batch.seq_lens,  # (not read without trees)
        scale, batch.block_tables.stride(0), block_size, group_size, q_heads,
        batch.sliding_window or 0,
        q_heads * head_dim, head_dim, kv_heads * head_dim,
        HEAD_DIM=head_dim, BLOCK_D=block_d,
        BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, NUM_SPLITS=splits, HAS_TREES=bool(batch.trees),
        PRECISION="ieee" if query.dtype == torch.float32 or dot_in_fp32 else "tf32",  # no TF32 rounding of fp32
        DOT_IN_FP32=dot_in_fp32,
    )  # fmt: skip
    if splits > 1:
        _merge_splits_kernel[(num_tokens, q_heads)](
            partial, out, q_heads * head_dim, head_dim,
            HEAD_DIM=head_dim, BLOCK_D=block_d, NUM_SPLITS=splits, BLOCK_S=triton.next_power_of_2(splits),
        )  # fmt: skip
    return out


if triton is not None:

    @triton.jit
    def _paged_attention_kernel(
        q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, partial_ptr,
        block_tables_ptr, seq_lens_ptr, query_start_ptr, tree_bits_ptr,
        scale, table_stride, block_size, group_size, q_heads,
        window,
        q_token_stride, q_head_stride, kv_slot_stride,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        NUM_SPLITS: tl.constexpr, PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr, HAS_TREES: tl.constexpr,
    ):  # fmt: skip
        seq = tl.program_id(0)
        kv_head = tl.program_id(1)
        tile = tl.program_id(2) // NUM_SPLITS
        split = tl.program_id(2) % NUM_SPLITS
        q_begin = tl.load(query_start_ptr + seq)
        q_len = tl.load(query_start_ptr + seq + 1) - q_begin
        if tile * BLOCK_M < q_len * group_size:
            seq_len = tl.load(seq_lens_ptr + seq)
            stacked = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # query row r of group head h is row r * group + h
            rows = stacked // group_size
            head = kv_head * group_size + stacked % group_size
            row_ok = stacked < q_len * group_size
            q_pos = seq_len - q_len + rows  # absolute position of each query row
            d = tl.arange(0, BLOCK_D)
            d_ok = d < HEAD_DIM
            q_off = (q_begin + rows).to(tl.int64)[:, None] * q_token_stride + head[:, None] * q_head_stride + d[None, :]
            q = tl.load(q_ptr + q_off, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            if DOT_IN_FP32:
                q = q.to(tl.float32)
            if HAS_TREES:  # which of the sequence's new tokens each row sees (-1: all, causal alone)
                row_bits = tl.load(tree_bits_ptr + q_begin + rows, mask=row_ok, other=-1)

            m = tl.full([BLOCK_M], float("-inf"), tl.float32)
            s = tl.zeros([BLOCK_M], tl.float32)
            acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
            last_row = tl.minimum((tile + 1) * BLOCK_M, q_len * group_size) - 1
            last_pos = seq_len - q_len + last_row // group_size + 1  # causal: no key past the tile's last row
            first_pos = seq_len * 0
            if window > 0:
                first_row = tile * BLOCK_M // group_size
                first_pos = tl.maximum(0, (seq_len - q_len + first_row - window + 1) // BLOCK_N * BLOCK_N)
            if NUM_SPLITS > 1:  # this program's part: whole steps of BLOCK_N keys, so parts never overlap
                steps = tl.cdiv(tl.cdiv(last_pos - first_pos, BLOCK_N), NUM_SPLITS)
                first_pos = first_pos + split * steps * BLOCK_N
                last_pos = tl.minimum(last_pos, first_pos + steps * BLOCK_N)
            for start in range(first_pos, last_pos, BLOCK_N):
                k_pos = start + tl.arange(0, BLOCK_N)
                k_ok = k_pos < seq_len
                block = tl.load(block_tables_ptr + seq * table_stride + k_pos // block_size, mask=k_ok, other=0)
                slot = block.to(tl.int64) * block_size + k_pos % block_size
                kv_off = slot[:, None] * kv_slot_stride + kv_head * HEAD_DIM + d[None, :]
                kv_mask = k_ok[:, None] & d_ok[None, :]
                k = tl.load(k_cache_ptr + kv_off, mask=kv_mask, other=0.0)
                v = tl.load(v_cache_ptr + kv_off, mask=kv_mask, other=0.0)
                if DOT_IN_FP32:
                    k = k.to(tl.float32)
                    v = v.to(tl.float32)
                scores = (
                    tl.dot(q, tl.trans(k), input_precision=PRECISION, out_dtype=tl.float32) * scale
                )  # [BLOCK_M, BLOCK_N]
                allowed = k_ok[None, :] & (k_pos[None, :] <= q_pos[:, None])
                if window > 0:
                    allowed = allowed & (k_pos[None, :] > q_pos[:, None] - window)
                if HAS_TREES:
                    new = k_pos - (seq_len - q_len)  # the key's index among the new tokens, < 0 for the context
                    bit = tl.minimum(tl.maximum(new, 0), 63).to(tl.int64)
                    seen = ((row_bits[:, None] >> bit[None, :]) & 1) != 0
                    allowed = allowed & (seen | (new < 0)[None, :])
                scores = tl.where(allowed, scores, float("-inf"))
                m_new = tl.maximum(m, tl.max(scores, axis=1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing allowed yet
                p = tl.exp(scores - m_safe[:, None])
                correction = tl.exp(m - m_safe)
                s = s * correction + tl.sum(p, axis=1)
                acc = acc * correction[:, None] + tl.dot(
                    p.to(v.dtype), v, input_precision=PRECISION, out_dtype=tl.float32
                )
                m = m_new
            if NUM_SPLITS == 1:
                out = acc / tl.where(row_ok, s, 1.0)[:, None]  # padding rows summed nothing
                tl.store(out_ptr + q_off, out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
            else:  # [token, head, split, BLOCK_D + 2]: the sum, then the max and the denominator
                width = BLOCK_D + 2
                base = (((q_begin + rows).to(tl.int64) * q_heads + head) * NUM_SPLITS + split) * width  # [BLOCK_M]
                tl.store(partial_ptr + base[:, None] + d[None, :], acc, mask=row_ok[:, None])
                tl.store(partial_ptr + base + BLOCK_D, m, mask=row_ok)
                tl.store(partial_ptr + base + BLOCK_D + 1, s, mask=row_ok)

    @triton.jit
    def _merge_splits_kernel(
        partial_ptr, out_ptr, out_token_stride, out_head_stride,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr,
    ):  # fmt: skip
        """One row and head: the parts' sums rescaled to their common max, over the parts' denominators."""
        token = tl.program_id(0)
        head = tl.program_id(1)
        width = BLOCK_D + 2
        split = tl.arange(0, BLOCK_S)
        split_ok = split < NUM_SPLITS
        base = ((token.to(tl.int64) * tl.num_programs(1) + head) * NUM_SPLITS + split) * width  # [BLOCK_S]
        m = tl.load(partial_ptr + base + BLOCK_D, mask=split_ok, other=float("-inf"))
        s = tl.load(partial_ptr + base + BLOCK_D + 1, mask=split_ok, other=0.0)
        m_all = tl.max(m, axis=0)
        m_safe = tl.where(m_all == float("-inf"), 0.0, m_all)  # a row of no sequence (graph padding)
        weight = tl.where(m == float("-inf"), 0.0, tl.exp(m - m_safe))
        d = tl.arange(0, BLOCK_D)
        acc = tl.load(partial_ptr + base[:, None] + d[None, :], mask=split_ok[:, None], other=0.0)
        total = tl.sum(acc * weight[:, None], axis=0)
        denominator = tl.sum(s * weight, axis=0)
        out = total / tl.where(denominator == 0.0, 1.0, denominator)
        out_off = token.to(tl.int64) * out_token_stride + head * out_head_stride + d
        tl.store(out_ptr + out_off, out.to(out_ptr.dtype.element_ty), mask=d < HEAD_DIM)
