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
        self.indexed_until = 0  # every n-gram ending at or before this position is indexed

    def extend(self, tokens: list[int]) -> None:
        if tokens[: len(self.tokens)] != self.tokens:
            self.__init__(self.min_n, self.max_n)  # not an extension: a new context, start over
        self.tokens = list(tokens)
        # index n-grams ending at positions up to len - 1 (exclusive end), never the current suffix
        for end in range(self.indexed_until + 1, len(self.tokens)):
            for n in range(self.min_n, self.max_n + 1):
                if end - n >= 0:
                    self.last_end[tuple(self.tokens[end - n : end])] = end
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
