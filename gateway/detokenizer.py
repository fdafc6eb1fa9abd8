"""Streaming text deltas that never split a multi-byte character and never leak a stop string."""

from __future__ import annotations

from typing import Callable


class IncrementalDetokenizer:
    """Decodes the whole output each time and emits only the stable new suffix.

    Text ending in U+FFFD is an incomplete UTF-8 sequence and is held back; so are the last
    (longest stop string - 1) characters, which might turn out to be the start of a stop string.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop_strings: list[str]) -> None:
        self.decode = decode
        self.holdback = max((len(s) for s in stop_strings), default=1) - 1
        self.emitted = 0

    def delta(self, token_ids: list[int], final_text: str | None = None) -> str:
        """The new text for output `token_ids`; pass `final_text` on the last call to flush the rest."""
        if final_text is not None:
            text = final_text
        else:
            text = self.decode(token_ids)
            if text.endswith("\ufffd"):
                text = text.rstrip("\ufffd")
            text = text[: max(self.emitted, len(text) - self.holdback)]
        new = text[self.emitted :]
        self.emitted = max(self.emitted, len(text))
        return new
