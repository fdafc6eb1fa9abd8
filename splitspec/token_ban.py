"""min_tokens, vLLM's: until a request has that many output tokens, the target may not emit EOS
(unless the request ignores it) or any of the request's stop token ids.

The ban is applied to the target's logits in every verify pass, at the rows that score those positions,
so it is part of the target's distribution: a banned token is never the target's argmax or sample, a
draft of one is rejected as any token the target would not emit is, and speculative output stays
plain decoding's, greedy and sampled. Drafters need not know of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from splitspec import draft_tree
from splitspec.sampling_params import SamplingParams


@dataclass(frozen=True)
class TokenBan:
    token_ids: tuple[int, ...]
    until_length: int
    """The ban holds while the sequence, prompt included, is shorter than this: the positions it covers
    are those below it. Absolute, so it survives a sequence resent whole to another verifier."""

    @staticmethod
    def for_request(params: SamplingParams, prompt_length: int, eos_token_ids: Iterable[int]) -> TokenBan | None:
        if params.min_tokens <= 0:
            return None
        banned = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_token_ids))
        return TokenBan(tuple(sorted(banned)), prompt_length + params.min_tokens) if banned else None

    def apply(self, logits: torch.Tensor, first_position: int, parents: list[int] | None = None) -> None:
        """logits [rows, vocab], row i scoring the token at position first_position + i (with `parents`,
        a tree's: row i + 1 scores the position after draft token i, first_position + its depth): banned
        in place. Ids past the vocabulary (a stop token id the model cannot emit) need no ban."""
        banned = [t for t in self.token_ids if t < logits.shape[1]]
        if not banned:
            return
        parents = draft_tree.chain(logits.shape[0] - 1) if parents is None else parents
        positions = [first_position, *(first_position + d for d in draft_tree.depths(parents))]
        rows = [i for i, p in enumerate(positions[: logits.shape[0]]) if p < self.until_length]
        if rows:
            with torch.inference_mode():  # the runner's logits are inference tensors
                logits[torch.tensor(rows, dtype=torch.int64, device=logits.device)[:, None], banned] = float("-inf")
