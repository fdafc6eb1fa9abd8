"""A growing output's text, decoding a few tokens per step instead of the whole output every time.

Re-decoding the whole output after each token makes text cost O(n) per token, O(n^2) per request.
This is vLLM's technique instead (detokenize_incrementally with prefix_offset/read_offset): decode a
short window, the *context* (the tokens whose text was released last) followed by the *unreleased*
tokens after it, and take the window's text past the context's own text. A token's text can depend
on the tokens before it (a leading space a SentencePiece decoder strips at the start, the first bytes
of a UTF-8 character); the context supplies that.

Why the pieces add up to `decode(whole output)`: text is released only when it does not end in
U+FFFD, the decoders' mark of an incomplete UTF-8 character, so each release ends on a character
boundary, and decoding bytes that start on a boundary gives the same characters in any window. The
unreleased tokens' text in context is kept as `pending`, so released + pending is the whole text at
every step; readers that must not show a half-decoded character drop pending's trailing U+FFFDs.

Tokens that add no text to a non-empty context (special tokens skipped by the decode) are dropped
from the window rather than held, so a run of them costs nothing per token either.
"""

from __future__ import annotations

from typing import Callable

INCOMPLETE = "\ufffd"


class IncrementalDecoder:
    """The text of `tokens[first_token:]` for a token list that only grows; call `catch_up` after it grows."""

    def __init__(self, decode: Callable[[list[int]], str], first_token: int = 0) -> None:
        self.decode = decode
        self.num_tokens = first_token  # tokens of the list read so far, the skipped prefix included
        self.released_length = 0  # characters in the released text
        self.pending = ""  # the unreleased tokens' text in context; empty, or ends in U+FFFD
        self._released: list[str] = []  # the released text, in the pieces it was released in
        self._context: list[int] = []  # the tokens released last: the window's left context
        self._context_text = ""  # decode(_context) on its own, the part of the window's text to skip
        self._unreleased: list[int] = []  # the tokens after the context, their text pending

    @property
    def length(self) -> int:
        return self.released_length + len(self.pending)

    @property
    def complete_length(self) -> int:
        """Characters that will not change: all but the U+FFFDs that pending ends in, a character still arriving."""
        return self.released_length + len(self.pending.rstrip(INCOMPLETE))

    @property
    def text(self) -> str:
        """The whole text so far (joins every piece: read it once, at the end)."""
        return "".join(self._released) + self.pending

    def text_from(self, start: int) -> str:
        """The text from character `start` on, costing the length of what it returns, not of the whole text."""
        pieces, at = [self.pending], self.released_length
        for piece in reversed(self._released):
            if at <= start:
                break
            pieces.append(piece)
            at -= len(piece)
        return "".join(reversed(pieces))[start - at :]

    def catch_up(self, tokens: list[int]) -> None:
        """Decode the tokens appended to `tokens` since the last call, in one window."""
        if len(tokens) == self.num_tokens:
            return
        self._unreleased.extend(tokens[self.num_tokens :])
        self.num_tokens = len(tokens)
        window_text = self.decode(self._context + self._unreleased)
        if self._context and window_text == self._context_text:
            self._unreleased.clear()
            self.pending = ""
            return
        new_text = window_text[len(self._context_text) :]
        if not new_text or new_text.endswith(INCOMPLETE):
            self.pending = new_text
            return
        self._released.append(new_text)
        self.released_length += len(new_text)
        self.pending = ""
        self._context, self._unreleased = self._unreleased, []
        self._context_text = self.decode(self._context)
