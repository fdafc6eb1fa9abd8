"""Drafting inside the verifier (VerifyStep.local_draft): n-gram prompt lookup over a sequence's own
tokens, which the verifier already holds. A round drafted here needs no proposer, so it crosses one
link (gateway -> verifier -> gateway) instead of two. The verifier's extra work is small: the index
grows by the new tokens only, and a lookup is one dictionary probe per n-gram size. The drafts are
exactly those a proposer running `--method ngram` with the same lookup sizes would send: one-hot, so
sampled output keeps plain decoding's draws."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from splitspec.config import MAX_PROMPT_LOOKUP, check_prompt_lookup
from splitspec.drafts import Draft
from splitspec.errors import ServiceError, SplitspecError
from splitspec.ngram_index import NgramIndex


@dataclass(frozen=True)
class LocalDraftSpec:
    num_tokens: int
    prompt_lookup_min: int
    prompt_lookup_max: int
    speculator: bool = False
    """Draft with the verifier's speculator instead (verifier_svc.local_speculator)."""

    def check(self) -> None:
        if self.speculator:
            return
        try:
            check_prompt_lookup(self.prompt_lookup_min, self.prompt_lookup_max, MAX_PROMPT_LOOKUP)
        except SplitspecError as exc:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"local_draft: {exc}") from None


class LocalDrafter:
    """One n-gram index per sequence, extended as the sequence's tokens grow."""

    def __init__(self) -> None:
        self._indexes: dict[str, NgramIndex] = {}

    def draft(self, seq_id: str, token_ids: list[int], spec: LocalDraftSpec) -> Draft:
        spec.check()
        index = self._indexes.get(seq_id)
        if index is None or (index.min_n, index.max_n) != (spec.prompt_lookup_min, spec.prompt_lookup_max):
            index = self._indexes[seq_id] = NgramIndex(spec.prompt_lookup_min, spec.prompt_lookup_max)
        index.extend(token_ids)
        tokens = index.lookup(spec.num_tokens) if spec.num_tokens > 0 else []
        return Draft(tokens, [None] * len(tokens))

    def release(self, seq_id: str) -> None:
        self._indexes.pop(seq_id, None)
