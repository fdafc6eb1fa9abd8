"""The interface every model runner offers: batched ragged forward passes over a per-sequence KV cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from splitspec_kernels.dispatch import Kernels


@dataclass
class ForwardInput:
    """Feed `token_ids` after the `seq_id`'s cached tokens; return logits for the last `num_logits` of them
    (and, from forward_with_hidden, hidden states for the last `num_hidden`; None: the logit rows)."""

    seq_id: str
    token_ids: list[int]
    num_logits: int
    num_hidden: int | None = None
    tree: list[int] | None = None
    """A tree-shaped draft ending `token_ids`: its tokens' parents (splitspec.draft_tree), ROOT being the
    fed token just before them. Each token then attends to the cache, the tokens fed before the tree and
    its own ancestors, at the position of its depth. None: every token follows the one before."""

    @property
    def hidden_rows(self) -> int:
        return self.num_logits if self.num_hidden is None else self.num_hidden


class ModelRunner(Protocol):
    device: torch.device  # where its weights, KV cache, logits and hidden states live
    vocab_size: int
    max_model_len: int
    kernels: Kernels  # the attention and sampling kernels this runner's device uses

    def forward(self, inputs: list[ForwardInput]) -> torch.Tensor:
        """Logits [sum(num_logits), vocab] float32 on the runner's device, in input order. Raises
        OutOfKVBlocks before changing anything."""
        ...

    def forward_with_hidden(
        self, inputs: list[ForwardInput], aux_layers: tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As forward, plus the final (normed) hidden states [sum(hidden_rows), hidden] of each input's
        last `hidden_rows` rows: what drafters that read the target's state (MLP speculator, EAGLE)
        consume. aux_layers: the inputs of these decoder layers (the un-normed residual stream; 0 is
        the embedding) come first in each row, ascending: [rows, (len(aux_layers) + 1) * hidden] (EAGLE-3)."""
        ...

    def cached_length(self, seq_id: str) -> int: ...

    def describe_kv_cache(self) -> str:
        """What the KV cache holds, for start-up logs."""
        ...

    def truncate(self, seq_id: str, length: int) -> None:
        """Drop cached positions at or after `length` (rollback of rejected drafts)."""
        ...

    supports_trees: bool
    """Whether forward takes ForwardInput.tree; without, a verifier feeds a tree's main chain."""

    def keep_rows(self, seq_id: str, start: int, kept: list[int]) -> None:
        """After a tree's pass: the KV of the tokens fed at offsets `kept` (ascending) after cached
        position `start` moves to start, start + 1, ...; everything after them is dropped."""
        ...

    def free(self, seq_id: str) -> None: ...

    def reuse_prefix(self, seq_id: str, token_ids: list[int]) -> int:
        """For a sequence with nothing cached: take the cached blocks that hold the longest prefix of
        token_ids (all but the last token), and return how many tokens are now cached (0 without a
        prefix cache)."""
        ...

    def cache_prefix(self, seq_id: str, token_ids: list[int]) -> None:
        """token_ids are the sequence's committed tokens, through every cached position: its full
        blocks become reusable by later sequences (nothing without a prefix cache)."""
        ...

    def healthy(self) -> bool:
        """False when the runner can run no more passes (a tensor-parallel worker died)."""
        ...

    def close(self) -> None:
        """Release what the runner started (tensor-parallel workers)."""
        ...

    def can_fit(self, inputs: list[ForwardInput]) -> bool:
        """Whether the cache has room for all of `inputs` at once."""
        ...
