"""Tensor parallelism for the native runner: which slice of each weight a rank holds, and the
collectives that put the slices' results back together (Megatron-LM's layout, as vLLM uses it).

- q/k/v and gate/up are column-parallel (a rank holds some heads, some of the MLP's width); o and
  down are row-parallel (their inputs are what the rank computed) and followed by an all-reduce.
- With fewer KV heads than ranks, KV heads are replicated: rank r holds KV head r // (size / kv_heads).
- The embedding and the LM head are split by vocabulary: a rank embeds the tokens in its range (the
  others add zeros in the all-reduce) and computes the logits of its range (gathered for sampling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist

from splitspec.errors import SplitspecError


class Sliceable(Protocol):
    """A tensor, or safetensors' lazy slice of one: reading a slice reads only that part."""

    def get_shape(self) -> list[int]: ...

    def __getitem__(self, index) -> torch.Tensor: ...


@dataclass(frozen=True)
class TensorParallel:
    """This process's place in a tensor-parallel group of `size` ranks (the default process group)."""

    rank: int
    size: int

    @property
    def is_driver(self) -> bool:
        return self.rank == 0


def check_divisible(config, size: int) -> None:
    """The numbers a model needs divisible by the number of ranks, checked before anything starts."""
    q_heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or q_heads
    problems = []
    if q_heads % size:
        problems.append(f"{q_heads} attention heads")
    if kv_heads % size and size % kv_heads:
        problems.append(f"{kv_heads} KV heads (neither a multiple nor a divisor of it)")
    if config.intermediate_size % size:
        problems.append(f"MLP width {config.intermediate_size}")
    if problems:
        raise SplitspecError(
            f"tensor_parallel_size={size} does not divide this model's {', '.join(problems)}; "
            "use a tensor_parallel_size that does"
        )


def vocab_range(vocab_size: int, tp: TensorParallel) -> tuple[int, int]:
    """The rows of the embedding and LM head rank `tp.rank` holds: equal ranges, the last shorter."""
    per_rank = -(-vocab_size // tp.size)
    return min(vocab_size, tp.rank * per_rank), min(vocab_size, (tp.rank + 1) * per_rank)


class ShardPlan:
    """Which part of each checkpoint tensor a rank keeps, read without loading the rest."""

    def __init__(self, config, tp: TensorParallel) -> None:
        self.tp = tp
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.q_heads = config.num_attention_heads // tp.size
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        if kv_heads >= tp.size:
            self.kv_heads, self.kv_first = kv_heads // tp.size, tp.rank * (kv_heads // tp.size)
        else:  # replicated: each KV head serves size / kv_heads ranks
            self.kv_heads, self.kv_first = 1, tp.rank // (tp.size // kv_heads)
        self.mlp = config.intermediate_size // tp.size
        self.vocab = vocab_range(config.vocab_size, tp)

    def take(self, name: str, source: Sliceable) -> torch.Tensor:
        rows = self._rows(name)
        if rows is not None:
            return source[rows[0] : rows[1]]
        columns = self._columns(name)
        if columns is not None:
            return source[:, columns[0] : columns[1]]
        return source[:]

    def _rows(self, name: str) -> tuple[int, int] | None:
        r, d = self.tp.rank, self.head_dim
        if name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
            return r * self.q_heads * d, (r + 1) * self.q_heads * d
        if name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias", "self_attn.v_proj.weight",
                          "self_attn.v_proj.bias")):  # fmt: skip
            return self.kv_first * d, (self.kv_first + self.kv_heads) * d
        if name.endswith(("mlp.gate_proj.weight", "mlp.up_proj.weight")):
            return r * self.mlp, (r + 1) * self.mlp
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            return self.vocab
        return None

    def _columns(self, name: str) -> tuple[int, int] | None:
        r = self.tp.rank
        if name.endswith("self_attn.o_proj.weight"):
            return r * self.q_heads * self.head_dim, (r + 1) * self.q_heads * self.head_dim
        if name.endswith("mlp.down_proj.weight"):
            return r * self.mlp, (r + 1) * self.mlp
        return None


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(x)
    return x


def embed(tokens: torch.Tensor, table: torch.Tensor, vocab: tuple[int, int]) -> torch.Tensor:
    """Vocab-parallel embedding lookup: this rank's rows, zeros for tokens it does not hold, summed."""
    mine = (tokens >= vocab[0]) & (tokens < vocab[1])
    x = torch.nn.functional.embedding(torch.where(mine, tokens - vocab[0], 0), table)
    return all_reduce(x * mine[:, None].to(x.dtype))


def gather_logits(local: torch.Tensor, vocab_size: int, tp: TensorParallel) -> torch.Tensor:
    """[rows, this rank's vocab] on every rank -> [rows, vocab_size]."""
    per_rank = -(-vocab_size // tp.size)
    padded = torch.nn.functional.pad(local, (0, per_rank - local.shape[-1]))
    parts = [torch.empty_like(padded) for _ in range(tp.size)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat(parts, dim=-1)[:, :vocab_size]


def min_over_ranks(value: int, device: torch.device) -> int:
    """The smallest of every rank's value (KV blocks: every rank must hold the same number)."""
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())
