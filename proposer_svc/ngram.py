"""Prompt-lookup drafting: continue the longest suffix n-gram that occurred earlier in the context."""

from __future__ import annotations

from proposer_svc.proposer import Proposer
from splitspec.drafts import Draft, DraftRequest
from splitspec.ngram_index import NgramIndex


class NgramProposer(Proposer):
    method = "ngram"
    drafts_after_rejection = True

    def __init__(self, prompt_lookup_min: int, prompt_lookup_max: int) -> None:
        self.min_n, self.max_n = prompt_lookup_min, prompt_lookup_max
        self._indexes: dict[str, NgramIndex] = {}

    def propose(self, requests: list[DraftRequest]) -> list[Draft]:
        drafts = []
        for req in requests:
            index = self._indexes.setdefault(req.seq_id, NgramIndex(self.min_n, self.max_n))
            committed = len(req.token_ids) - req.num_assumed
            index.extend(req.token_ids[:committed])  # the index grows with committed tokens only
            tail = req.token_ids[committed:]
            if req.num_tokens <= 0:
                drafts.append(Draft())
            elif req.tree_width > 1:
                tokens, parents = index.lookup_tree(req.num_tokens, req.tree_width, tail, req.excluded_first)
                drafts.append(Draft(tokens, [None] * len(tokens), parents))
            else:
                tokens = index.lookup(req.num_tokens, tail, req.excluded_first)
                drafts.append(Draft(tokens, [None] * len(tokens)))
        return drafts

    def release(self, seq_id: str) -> None:
        self._indexes.pop(seq_id, None)
