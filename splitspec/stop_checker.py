"""Commit a round's tokens one at a time and stop a sequence exactly where plain decoding would."""

from __future__ import annotations

from typing import Callable

from splitspec.outputs import FinishReason
from splitspec.sequence import Sequence


class StopChecker:
    def __init__(
        self, eos_token_ids: set[int], max_model_len: int, detokenize: Callable[[list[int]], str] | None
    ) -> None:
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len
        self.detokenize = detokenize

    def commit(self, seq: Sequence, new_tokens: list[int]) -> int:
        """Append tokens until a stop condition fires; return how many were appended."""
        params = seq.params
        for count, token in enumerate(new_tokens, start=1):
            seq.tokens.append(token)
            if not params.ignore_eos and token in self.eos_token_ids:
                seq.finish_reason = FinishReason.STOP
            elif token in params.stop_token_ids:
                seq.finish_reason, seq.stop_reason = FinishReason.STOP, token
            elif params.stop_strings and self._hit_stop_string(seq):
                pass
            elif params.max_tokens is not None and seq.num_output_tokens >= params.max_tokens:
                seq.finish_reason = FinishReason.LENGTH
            elif len(seq.tokens) >= self.max_model_len:
                seq.finish_reason = FinishReason.LENGTH
            if seq.finished:
                return count
        return len(new_tokens)

    def _hit_stop_string(self, seq: Sequence) -> bool:
        text = self.detokenize(seq.output_token_ids) if self.detokenize else ""
        for stop in seq.params.stop_strings:
            at = text.find(stop)
            if at >= 0:
                seq.finish_reason, seq.stop_reason = FinishReason.STOP, stop
                seq.text = text[: at + len(stop)] if seq.params.include_stop_str_in_output else text[:at]
                return True
        return False
