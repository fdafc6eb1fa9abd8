"""Attention of ragged multi-token queries against a paged KV cache (plain PyTorch reference)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AttentionBatch:
    """Layout of one forward pass, shared by every layer.

    Sequence b owns query rows [query_start[b], query_start[b] + query_len[b]) of the flattened
    tokens; its keys are the first seq_len[b] slots reached through block_tables[b], the last
    query_len[b] of which are the new tokens themselves.
    """

    block_tables: torch.Tensor  # [batch, max_blocks] int64, padded with 0
    seq_lens: torch.Tensor  # [batch] int64: context length including the new tokens
    query_lens: list[int]
    query_index: torch.Tensor  # [batch, max_query_len] int64 row of each padded query in the flat batch
    query_valid: torch.Tensor  # [batch, max_query_len] bool
    mask: torch.Tensor  # [batch, 1, max_query_len, max_seq_len] bool, True = may attend
    slot_mapping: torch.Tensor  # [num_tokens] int64 flat cache slot of each new token

    @staticmethod
    def build(
        block_tables: list[list[int]],
        seq_lens: list[int],
        query_lens: list[int],
        slot_mapping: list[int],
        sliding_window: int | None = None,
    ) -> "AttentionBatch":
        batch = len(seq_lens)
        max_blocks = max(len(t) for t in block_tables)
        tables = torch.zeros(batch, max_blocks, dtype=torch.int64)
        for b, table in enumerate(block_tables):
            tables[b, : len(table)] = torch.tensor(table, dtype=torch.int64)
        max_q, max_kv = max(query_lens), max(seq_lens)
        starts = torch.tensor([0] + query_lens[:-1], dtype=torch.int64).cumsum(0)
        lens_q = torch.tensor(query_lens, dtype=torch.int64)
        lens_kv = torch.tensor(seq_lens, dtype=torch.int64)
        rows = torch.arange(max_q)
        query_valid = rows[None, :] < lens_q[:, None]
        query_index = torch.where(query_valid, starts[:, None] + rows[None, :], torch.zeros_like(query_valid, dtype=torch.int64))
        # absolute position of each padded query row and each key column
        q_pos = (lens_kv - lens_q)[:, None] + rows[None, :]  # [batch, max_q]
        k_pos = torch.arange(max_kv)
        mask = (k_pos[None, None, :] <= q_pos[:, :, None]) & (k_pos[None, None, :] < lens_kv[:, None, None])
        if sliding_window is not None:
            mask &= k_pos[None, None, :] > q_pos[:, :, None] - sliding_window
        return AttentionBatch(
            block_tables=tables,
            seq_lens=lens_kv,
            query_lens=list(query_lens),
            query_index=query_index,
            query_valid=query_valid,
            mask=mask[:, None],
            slot_mapping=torch.tensor(slot_mapping, dtype=torch.int64),
        )


def write_kv_cache(
    key: torch.Tensor,  # [num_tokens, kv_heads, head_dim]
    value: torch.Tensor,  # [num_tokens, kv_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, kv_heads, head_dim]
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [num_tokens]
) -> None:
    key_cache.view(-1, *key_cache.shape[2:]).index_copy_(0, slot_mapping, key)
    value_cache.view(-1, *value_cache.shape[2:]).index_copy_(0, slot_mapping, value)


def paged_attention(
    query: torch.Tensor,  # [num_tokens, q_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, kv_heads, head_dim]
    value_cache: torch.Tensor,
    batch: AttentionBatch,
    scale: float,
) -> torch.Tensor:  # [num_tokens, q_heads, head_dim]
    num_seqs, max_blocks = batch.block_tables.shape
    block_size = key_cache.shape[1]
    max_kv = int(batch.mask.shape[-1])
    keys = key_cache[batch.block_tables].reshape(num_seqs, max_blocks * block_size, *key_cache.shape[2:])
    values = value_cache[batch.block_tables].reshape(num_seqs, max_blocks * block_size, *value_cache.shape[2:])
    keys = keys[:, :max_kv].transpose(1, 2)  # [batch, kv_heads, max_kv, head_dim]
    values = values[:, :max_kv].transpose(1, 2)
    queries = query[batch.query_index].transpose(1, 2)  # [batch, q_heads, max_q, head_dim]
    out = F.scaled_dot_product_attention(
        queries, keys, values, attn_mask=batch.mask, scale=scale, enable_gqa=True
    )  # [batch, q_heads, max_q, head_dim]
    return out.transpose(1, 2)[batch.query_valid]
