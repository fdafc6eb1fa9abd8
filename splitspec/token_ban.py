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

    def apply(self, logits: torch.Tensor, first_position: int) -> None:
        """logits [rows, vocab], row i scoring the token at position first_position + i: banned in place.
        Ids past the vocabulary (a stop token id the model cannot emit) need no ban."""
        rows = min(logits.shape[0], self.until_length - first_position)
        banned = [t for t in self.token_ids if t < logits.shape[1]]
        if rows > 0 and banned:
            with torch.inference_mode():  # the runner's logits are inference tensors
                logits[:rows, banned] = float("-inf")
