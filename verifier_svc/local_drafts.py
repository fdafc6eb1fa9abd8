"""Drafting inside the verifier (VerifyStep.local_draft): n-gram prompt lookup over a sequence's own
tokens, which the verifier already holds. A round drafted here needs no proposer, so it crosses one
link (gateway -> verifier -> gateway) instead of two. The verifier's extra work is small: the index
grows by the new tokens only, and a lookup is one dictionary probe per n-gram size. The drafts are
exactly those a proposer running `--method ngram` with the same lookup sizes would send: one-hot, so
sampled output keeps plain decoding's draws."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from splitspec.config import MAX_PROMPT_LOOKUP, MAX_TREE_WIDTH, check_prompt_lookup
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
    tree_width: int = 1
    """The most branches per drafted token (NgramIndex.lookup_tree; the speculator's top-k expansion)."""

    def check(self) -> None:
        if not 1 <= self.tree_width <= MAX_TREE_WIDTH:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"local_draft.tree_width: at most {MAX_TREE_WIDTH}, got {self.tree_width}",
            )
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
        if spec.num_tokens <= 0:
            return Draft()
        if spec.tree_width > 1:
            tokens, parents = index.lookup_tree(spec.num_tokens, spec.tree_width)
            return Draft(tokens, [None] * len(tokens), parents)
        tokens = index.lookup(spec.num_tokens)
        return Draft(tokens, [None] * len(tokens))

    def release(self, seq_id: str) -> None:
        self._indexes.pop(seq_id, None)
