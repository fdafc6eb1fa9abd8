"""The n-gram index behind prompt-lookup drafting, shared by the ngram proposer and the verifier's
own n-gram drafts (verifier_svc.local_drafts)."""

from __future__ import annotations


class NgramIndex:
    """For each n, the end of the most recent occurrence of every n-gram that ends before the last token.

    Extended incrementally as committed tokens arrive; committed tokens never change, so the index
    only grows.
    """

    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n, self.max_n = min_n, max_n
        self.tokens: list[int] = []
        self.last_end: dict[tuple[int, ...], int] = {}
        self.ends: dict[tuple[int, ...], list[int]] = {}  # every occurrence's end, oldest first
        self.indexed_until = 0  # every n-gram ending at or before this position is indexed

    def extend(self, tokens: list[int]) -> None:
        if tokens[: len(self.tokens)] != self.tokens:
            self.__init__(self.min_n, self.max_n)  # not an extension: a new context, start over
        self.tokens = list(tokens)
        # index n-grams ending at positions up to len - 1 (exclusive end), never the current suffix
        for end in range(self.indexed_until + 1, len(self.tokens)):
            for n in range(self.min_n, self.max_n + 1):
                if end - n >= 0:
                    gram = tuple(self.tokens[end - n : end])
                    self.last_end[gram] = end
                    self.ends.setdefault(gram, []).append(end)
        self.indexed_until = max(self.indexed_until, len(self.tokens) - 1)

    def lookup(self, num_tokens: int, tail: list[int] | None = None, excluded_first: tuple[int, ...] = ()) -> list[int]:
        """The continuation of the longest indexed n-gram the context ends with. tail: tokens assumed
        after the indexed ones (a draft ahead), which the context ends with but the index never holds.
        excluded_first: the continuation may not start with these; a shorter n-gram's is tried instead."""
        tokens = self.tokens + tail if tail else self.tokens
        size = len(tokens)
        for n in range(min(self.max_n, size - 1), self.min_n - 1, -1):
            end = self.last_end.get(tuple(tokens[size - n :]))
            if end is not None and tokens[end] not in excluded_first:
                return tokens[end : end + num_tokens]
        return []

    def lookup_tree(
        self, num_tokens: int, width: int, tail: list[int] | None = None, excluded_first: tuple[int, ...] = ()
    ) -> tuple[list[int], list[int]]:
        """(tokens, parents) of a tree of at most num_tokens tokens, each with at most `width` children:
        the continuations of the context's longest indexed n-gram and of the shorter ones, merged where
        they agree, pruned to the tokens likeliest to be accepted (_likeliest_tree). A token comes after
        its parent, and its first child is its likeliest."""
        tokens = self.tokens + tail if tail else self.tokens
        size = len(tokens)
        continuations: list[tuple[int, list[int]]] = []  # (n matched, continuation), most recent first
        seen: set[int] = set()
        for n in range(min(self.max_n, size - 1), self.min_n - 1, -1):
            found = [e for e in self.ends.get(tuple(tokens[size - n :]), []) if tokens[e] not in excluded_first]
            for end in reversed(found[-_MOST_OCCURRENCES:]):
                if end not in seen:
                    seen.add(end)
                    continuations.append((n, tokens[end : end + num_tokens]))
        return _likeliest_tree(continuations, num_tokens, width)


_MOST_OCCURRENCES = 64
"""The most recent occurrences of an n-gram whose continuations shape a tree."""
_MATCH_WEIGHT = 4.0
"""A continuation counts _MATCH_WEIGHT ** n: one after a match one token longer counts four times as much."""
_ACCEPTANCE = 0.5
"""The chance a drafted token is accepted when every continuation agrees on it (EAGLE-2's path
probability, with the continuations' shares as the drafter's distribution)."""


def _likeliest_tree(continuations: list[tuple[int, list[int]]], budget: int, width: int) -> tuple[list[int], list[int]]:
    """The trie of the continuations, pruned to the `budget` tokens of highest estimated chance of being
    reached and accepted: a token's chance is its parent's times _ACCEPTANCE times its share of the
    continuations through its parent (weighted by match length); at most `width` children per token.
    Ties go to the most recent continuation."""
    weight: dict[tuple[int, ...], float] = {(): 0.0}
    recency: dict[tuple[int, ...], int] = {}
    for rank, (n, continuation) in enumerate(continuations):
        w = _MATCH_WEIGHT**n
        weight[()] += w
        for depth in range(1, len(continuation) + 1):
            path = tuple(continuation[:depth])
            weight[path] = weight.get(path, 0.0) + w
            recency.setdefault(path, rank)
    chance: dict[tuple[int, ...], float] = {(): 1.0}
    for path in sorted(recency, key=len):  # parents first
        chance[path] = chance[path[:-1]] * _ACCEPTANCE * weight[path] / weight[path[:-1]]
    tokens: list[int] = []
    parents: list[int] = []
    index: dict[tuple[int, ...], int] = {(): -1}
    kids: dict[tuple[int, ...], int] = {}
    # a token's chance is below its parent's, so in this order every parent comes before its children
    for path in sorted(recency, key=lambda path: (-chance[path], recency[path], len(path))):
        if len(tokens) == budget:
            break
        parent = path[:-1]
        if parent in index and kids.get(parent, 0) < width:
            index[path] = len(tokens)
            kids[parent] = kids.get(parent, 0) + 1
            tokens.append(path[-1])
            parents.append(index[parent])
    return tokens, parents
