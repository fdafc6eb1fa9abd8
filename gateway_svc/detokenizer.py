"""Streaming text deltas that never split a multi-byte character and never leak a stop string."""

from __future__ import annotations

from typing import Callable

from splitspec.incremental_decoder import IncrementalDecoder


class IncrementalDetokenizer:
    """The new text of each round, decoded a few tokens at a time (splitspec/incremental_decoder.py).

    Text ending in U+FFFD is an incomplete UTF-8 character and is held back; so are the last
    (longest stop string - 1) characters, which might turn out to be the start of a stop string.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop_strings: list[str], num_prompt_tokens: int) -> None:
        self.decoder = IncrementalDecoder(decode, num_prompt_tokens)
        self.holdback = max((len(s) for s in stop_strings), default=1) - 1
        self.emitted = 0

    def delta(self, tokens: list[int]) -> str:
        """The new text for `tokens` (prompt and output) as they grow, holding back what may still change."""
        self.decoder.catch_up(tokens)
        end = self.decoder.complete_length - self.holdback
        if end <= self.emitted:
            return ""
        new = self.decoder.text_from(self.emitted)[: end - self.emitted]
        self.emitted = end
        return new

    def final_delta(self, final_text: str) -> str:
        """The rest of the finished output's text."""
        new = final_text[self.emitted :]
        self.emitted = len(final_text)
        return new
