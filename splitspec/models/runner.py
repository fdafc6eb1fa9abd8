"""The interface every model runner offers: batched ragged forward passes over a per-sequence KV cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from kernels.dispatch import Kernels


@dataclass
class ForwardInput:
    """Feed `token_ids` after the `seq_id`'s cached tokens; return logits for the last `num_logits` of them."""

    seq_id: str
    token_ids: list[int]
    num_logits: int


class ModelRunner(Protocol):
    vocab_size: int
    max_model_len: int
    kernels: Kernels  # the attention and sampling kernels this runner's device uses

    def forward(self, inputs: list[ForwardInput]) -> torch.Tensor:
        """Logits [sum(num_logits), vocab] float32, in input order. Raises OutOfKVBlocks before changing anything."""
        ...

    def forward_with_hidden(self, inputs: list[ForwardInput]) -> tuple[torch.Tensor, torch.Tensor]:
        """As forward, plus the final (normed) hidden states [sum(num_logits), hidden] of the same rows:
        what drafters that read the target's state (MLP speculator, EAGLE) consume."""
        ...

    def cached_length(self, seq_id: str) -> int: ...

    def truncate(self, seq_id: str, length: int) -> None:
        """Drop cached positions at or after `length` (rollback of rejected drafts)."""
        ...

    def free(self, seq_id: str) -> None: ...

    def can_fit(self, inputs: list[ForwardInput]) -> bool:
        """Whether the cache has room for all of `inputs` at once."""
        ...
