"""Suffix decoding: draft what earlier text continued with, from this request and from past answers.

Each sequence has its own suffix tree of its prompt and the tokens committed so far; one global tree
holds the outputs of the last `max_cached_requests` sequences this drafter served (first in, first
out), so that a request repeating earlier work finds its answer there. Each round drafts from
whichever tree scores higher (proposer_svc.suffix_tree). How many tokens it drafts follows the match
length and the estimated probabilities, up to the request's number of tokens. Drafts are
deterministic: q is one-hot, so seeded and sampled output stay exact.

The trees hold paths of at most max_tree_depth tokens, so a speculation that matched m tokens drafts
at most max_tree_depth - m: with vLLM's depth of 24, about 12 tokens however long the remembered answer
goes on. Where a draft was cut by that horizon, this drafter speculates again from the context the
draft leads to (a match as long as the first, and a draft as justified by it), at the probability
reached so far, until the request's number of tokens: a remembered answer is then drafted K at a time
(docs/benchmarks.md measures what that gains).

With DraftRequest.tree_width > 1 it drafts the tree the suffix trees hold: the continuations of
highest estimate, up to tree_width below each token (SuffixTree.speculate_tree), where that tree's
score (the sum of its estimates: the tokens it expects accepted) beats the chain's above, which drafts
on past the horizon.

In the proposer service the global tree is the pod's memory, shared by every sequence it serves.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count

from proposer_svc.proposer import Proposer
from proposer_svc.suffix_tree import Speculation, SuffixTree
from splitspec import draft_tree
from splitspec.drafts import Draft, DraftRequest
from splitspec.suffix_settings import SuffixSettings


@dataclass
class _Active:
    tree: SuffixTree
    """The prompt and the committed tokens."""
    length: int
    """Committed tokens held."""
    num_prompt_tokens: int
    cache_key: int
    """Its output's key in the global tree."""


class SuffixProposer(Proposer):
    method = "suffix"
    sizes_own_drafts = True
    remembers_outputs = True

    def __init__(self, settings: SuffixSettings) -> None:
        self.settings = settings
        self.global_tree = SuffixTree(settings.max_tree_depth)
        self._active: dict[str, _Active] = {}
        self._cached: OrderedDict[int, None] = OrderedDict()  # the global tree's outputs, oldest first
        self._keys = count()

    @property
    def num_cached_requests(self) -> int:
        return len(self._cached)

    def propose(self, requests: list[DraftRequest]) -> list[Draft]:
        return [self._draft(req) for req in requests]

    def release(self, seq_id: str) -> None:
        """The sequence ended: its own tree goes, its output stays in the global tree."""
        self._active.pop(seq_id, None)

    def finish(self, seq_id: str, token_ids: list[int]) -> None:
        state = self._active.get(seq_id)
        if state is not None and len(token_ids) > state.length:
            self._commit(state, token_ids, len(token_ids))
        self.release(seq_id)

    def _draft(self, req: DraftRequest) -> Draft:
        committed = len(req.token_ids) - req.num_assumed
        state = self._active.get(req.seq_id)
        if state is None or committed < state.length:  # new, or not the context it holds: start over
            state = self._start(req.seq_id, req.token_ids[: req.num_prompt_tokens or committed])
        if committed > state.length:
            self._commit(state, req.token_ids, committed)
        if req.num_tokens <= 0:
            return Draft()
        context = req.token_ids[-self.settings.max_tree_depth :]
        best = self._speculate(state, context, req.num_tokens, self.settings.min_token_prob)
        tokens, prob, score = best.token_ids, best.probs[-1] if best.probs else 1.0, best.score
        while best.cut and len(tokens) < req.num_tokens:
            # the trees hold paths of max_tree_depth tokens: where one was cut there, draft on from the
            # context it led to, at the probability reached so far
            context = (context + best.token_ids)[-self.settings.max_tree_depth :]
            best = self._speculate(state, context, req.num_tokens - len(tokens), self.settings.min_token_prob / prob)
            tokens = tokens + best.token_ids
            score += prob * best.score
            prob *= best.probs[-1] if best.probs else 1.0
        if req.tree_width > 1:  # a tree where it expects more accepted tokens than the chain
            tree = self._speculate_tree(
                state, req.token_ids[-self.settings.max_tree_depth :], req.num_tokens, req.tree_width
            )
            if tree.score > score and tree.parents is not None and not draft_tree.is_chain(tree.parents):
                return Draft(tree.token_ids, [None] * len(tree.token_ids), tree.parents)
        return Draft(tokens, [None] * len(tokens))

    def _speculate(self, state: _Active, context: list[int], num_tokens: int, min_token_prob: float) -> Speculation:
        factor = self.settings.max_spec_factor
        return self._higher_scoring(state, lambda tree: tree.speculate(context, num_tokens, factor, min_token_prob))

    def _speculate_tree(self, state: _Active, context: list[int], num_tokens: int, width: int) -> Speculation:
        s = self.settings
        return self._higher_scoring(
            state, lambda tree: tree.speculate_tree(context, num_tokens, width, s.max_spec_factor, s.min_token_prob)
        )

    def _higher_scoring(self, state: _Active, speculate: Callable[[SuffixTree], Speculation]) -> Speculation:
        """The higher scoring of the request's own tree's speculation and the global tree's."""
        best = speculate(state.tree)
        if self._cached:
            found = speculate(self.global_tree)
            if found.score > best.score:
                best = found
        return best

    def _commit(self, state: _Active, token_ids: list[int], committed: int) -> None:
        """Add token_ids[state.length : committed] to the request's tree, and its output to the global one."""
        state.tree.extend(0, token_ids[state.length : committed])
        if state.cache_key in self._cached:
            output_from = max(state.length, state.num_prompt_tokens)
            self.global_tree.extend(state.cache_key, token_ids[output_from:committed])
        state.length = committed

    def _start(self, seq_id: str, prompt: list[int]) -> _Active:
        previous = self._active.pop(seq_id, None)
        if previous is not None and previous.cache_key in self._cached:  # its output is added again
            self._uncache(previous.cache_key)
        tree = SuffixTree(self.settings.max_tree_depth)
        tree.extend(0, prompt)
        key = next(self._keys)
        if self.settings.max_cached_requests > 0:
            self._cached[key] = None
            while len(self._cached) > self.settings.max_cached_requests:
                self._uncache(next(iter(self._cached)))
        state = self._active[seq_id] = _Active(tree, len(prompt), len(prompt), key)
        return state

    def _uncache(self, key: int) -> None:
        """Take a past output out of the global tree (it has none there until its first output token)."""
        del self._cached[key]
        if key in self.global_tree:
            self.global_tree.remove(key)
