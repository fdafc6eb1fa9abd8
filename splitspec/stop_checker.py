"""Commit a round's tokens one at a time and stop a sequence exactly where plain decoding would."""

from __future__ import annotations

from typing import Callable

from splitspec.incremental_decoder import IncrementalDecoder
from splitspec.outputs import FinishReason
from splitspec.sampling_params import SamplingParams
from splitspec.sequence import Sequence

Detokenize = Callable[[list[int], SamplingParams], str]
"""Output tokens as the user sees them, decoded as the request asks (splitspec.tokenizer.decode_output)."""


class StopChecker:
    """`detokenize` gives the output's text, in which stop strings are looked for; without one, stop
    strings never match."""

    def __init__(self, eos_token_ids: set[int], max_model_len: int, detokenize: Detokenize | None) -> None:
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len
        self.detokenize = detokenize

    def commit(self, seq: Sequence, new_tokens: list[int]) -> int:
        """Append tokens until a stop condition fires; return how many were appended. Before min_tokens
        output tokens only the lengths are (the target cannot emit EOS or a stop token id there), and
        stop strings are looked for in the text from then on, as vLLM does."""
        params = seq.params
        for count, token in enumerate(new_tokens, start=1):
            seq.tokens.append(token)
            if seq.num_output_tokens < params.min_tokens:
                if params.stop_strings and self.detokenize is not None:
                    self._decoder(seq).catch_up(seq.tokens)
                if len(seq.tokens) >= self.max_model_len:
                    seq.finish_reason = FinishReason.LENGTH
            elif not params.ignore_eos and token in self.eos_token_ids:
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

    def output_text(self, seq: Sequence) -> str:
        """A finished output's text: cut at the stop string that stopped it, else the whole output decoded
        but for the EOS or stop token id that ended it, which is text only with include_stop_str_in_output
        (vLLM's rule; it shows where special tokens are not skipped, or a stop token id is a word)."""
        if seq.stop_reason in seq.params.stop_strings:
            return seq.text
        if self.detokenize is None:
            return ""
        ids = seq.output_token_ids
        if seq.finish_reason == FinishReason.STOP and not seq.params.include_stop_str_in_output:
            ids = ids[:-1]
        return self.detokenize(ids, seq.params)

    def _decoder(self, seq: Sequence) -> IncrementalDecoder:
        if seq.decoded_output is None:
            detokenize, params = self.detokenize, seq.params
            seq.decoded_output = IncrementalDecoder(lambda ids: detokenize(ids, params), len(seq.prompt_token_ids))
        return seq.decoded_output

    def _hit_stop_string(self, seq: Sequence) -> bool:
        """Search the text the newest token changed for a stop string; the first in `stop` order wins.

        Checked after every token, so a stop string that is there now and was not before ends in the
        text this token changed (everything past what was released before it), and starts at most
        len(stop) - 1 characters earlier: only that stretch is searched, so the check costs the same
        at any output length.
        """
        if self.detokenize is None:
            return False
        decoder = self._decoder(seq)
        unchanged = decoder.released_length
        decoder.catch_up(seq.tokens)
        stops = seq.params.stop_strings
        searched_from = max(0, unchanged - max(len(s) for s in stops) + 1)
        searched = decoder.text_from(searched_from)
        for stop in stops:
            at = searched.find(stop)
            if at >= 0:
                end = searched_from + at + (len(stop) if seq.params.include_stop_str_in_output else 0)
                seq.finish_reason, seq.stop_reason = FinishReason.STOP, stop
                seq.text = decoder.text[:end]
                return True
        return False
