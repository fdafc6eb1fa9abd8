"""Per-request sampling parameters, shaped like vLLM's `SamplingParams`."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from splitspec.errors import SplitspecError
from splitspec.structured_outputs import StructuredOutputsParams
from splitspec.token_logprobs import MAX_LOGPROBS


@dataclass
class SamplingParams:
    """How to pick each token of one request.

    temperature 0 means greedy. top_k <= 0 (or -1, vLLM's spelling) disables top-k; top_p 1 disables
    top-p. With a seed, sampled output is reproducible whatever else is in the batch. min_tokens: the
    output has at least this many tokens before EOS or a stop token id can end it, and before a stop
    string is looked for (as vLLM; splitspec.token_ban). logprobs: None, or each output token's
    log-probability with those of this many most likely tokens (splitspec.token_logprobs).
    prompt_logprobs: the same for each prompt token after the first (vLLM's), from the first pass.
    truncate_prompt_tokens: None, or generate from only the prompt's last this many tokens (vLLM's).
    presence_penalty, frequency_penalty (OpenAI's, in [-2, 2]) and repetition_penalty (vLLM's, > 0; 1 is
    off): applied to the target's logits as vLLM does (splitspec.token_penalties). structured_outputs:
    what the output must match (splitspec.structured_outputs); it ends at EOS once matched.
    min_p (vLLM's, in [0, 1]; 0 is off): tokens less likely than min_p times the most likely one get no
    probability. logit_bias (OpenAI's): {token id: bias in [-100, 100]} added to the target's logits.
    Both apply as vLLM applies them (splitspec.logits_processing). skip_special_tokens (default true):
    special tokens are left out of the text; spaces_between_special_tokens: as transformers' decode
    takes it (fast tokenizers, the default model's included, put no spaces there either way).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int | None = 16
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    seed: int | None = None
    include_stop_str_in_output: bool = False
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    truncate_prompt_tokens: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    structured_outputs: StructuredOutputsParams | None = None
    min_p: float = 0.0
    logit_bias: dict[int, float] | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    _stop_strings: list[str] = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, (int, float)) or math.isnan(self.temperature) or self.temperature < 0:
            raise SplitspecError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or math.isnan(self.top_p) or not 0 < self.top_p <= 1:
            raise SplitspecError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool):
            raise SplitspecError(f"top_k must be an integer (-1 or 0 disables it), got {self.top_k!r}")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            raise SplitspecError(f"max_tokens must be a positive integer or None, got {self.max_tokens!r}")
        if not isinstance(self.min_tokens, int) or isinstance(self.min_tokens, bool) or self.min_tokens < 0:
            raise SplitspecError(f"min_tokens must be an integer >= 0, got {self.min_tokens!r}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise SplitspecError(f"min_tokens ({self.min_tokens}) must be at most max_tokens ({self.max_tokens})")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_LOGPROBS
            ):
                raise SplitspecError(f"{name} must be None or an integer in [0, {MAX_LOGPROBS}], got {value!r}")
        if self.truncate_prompt_tokens is not None and (
            not isinstance(self.truncate_prompt_tokens, int)
            or isinstance(self.truncate_prompt_tokens, bool)
            or self.truncate_prompt_tokens < 1
        ):
            raise SplitspecError(
                f"truncate_prompt_tokens must be None or an integer >= 1, got {self.truncate_prompt_tokens!r}"
            )
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_number(value) or not -2.0 <= value <= 2.0:
                raise SplitspecError(f"{name} must be a number in [-2, 2], got {value!r}")
        if not _is_number(self.repetition_penalty) or not 0 < self.repetition_penalty < math.inf:
            raise SplitspecError(f"repetition_penalty must be a number > 0 (1 is off), got {self.repetition_penalty!r}")
        if not _is_number(self.min_p) or not 0.0 <= self.min_p <= 1.0:
            raise SplitspecError(f"min_p must be a number in [0, 1] (0 is off), got {self.min_p!r}")
        self.logit_bias = _logit_bias(self.logit_bias)
        for name in ("skip_special_tokens", "spaces_between_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise SplitspecError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.structured_outputs is not None:
            if not isinstance(self.structured_outputs, StructuredOutputsParams):
                raise SplitspecError("structured_outputs must be a StructuredOutputsParams")
            if self.ignore_eos or self.min_tokens:  # the grammar, once matched, allows only EOS
                raise SplitspecError("structured_outputs end at EOS: ignore_eos and min_tokens cannot be set with them")
        if self.seed is not None and not isinstance(self.seed, int):
            raise SplitspecError(f"seed must be an integer, got {self.seed!r}")
        stop = [self.stop] if isinstance(self.stop, str) else self.stop if self.stop is not None else []
        stop = list(stop) if isinstance(stop, Iterable) else stop
        if not isinstance(stop, list) or any(not isinstance(s, str) or not s for s in stop):
            raise SplitspecError(f"stop must be a non-empty string or a list of them, got {self.stop!r}")
        self._stop_strings = stop
        ids = self.stop_token_ids if self.stop_token_ids is not None else []
        ids = list(ids) if isinstance(ids, Iterable) else ids
        if not isinstance(ids, list) or any(not isinstance(t, int) or t < 0 for t in ids):
            raise SplitspecError(f"stop_token_ids must be non-negative integers, got {self.stop_token_ids!r}")
        self.stop_token_ids = ids

    def truncated(self, prompt_token_ids: list[int]) -> list[int]:
        """The prompt as generation sees it: its last truncate_prompt_tokens tokens, or all of it."""
        keep = self.truncate_prompt_tokens
        return prompt_token_ids[-keep:] if keep is not None else prompt_token_ids

    def check_vocabulary(self, vocab_size: int) -> None:
        """Raise SplitspecError unless every token id logit_bias names is in the vocabulary."""
        bad = next((t for t in self.logit_bias or {} if t >= vocab_size), None)
        if bad is not None:
            raise SplitspecError(f"logit_bias token ids must be in [0, {vocab_size}); got {bad}")

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def stop_strings(self) -> list[str]:
        return self._stop_strings


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


MAX_LOGIT_BIAS = 100.0  # OpenAI's bound on a logit_bias value


def _logit_bias(bias: object) -> dict[int, float] | None:
    """None or {} as None; otherwise {non-negative token id: bias in [-100, 100]}, as floats."""
    if not bias:
        return None
    if not isinstance(bias, dict):
        raise SplitspecError(f"logit_bias must be a dict of token id to bias, got {bias!r}")
    for token, value in bias.items():
        if not isinstance(token, int) or isinstance(token, bool) or token < 0:
            raise SplitspecError(f"logit_bias keys must be token ids (integers >= 0), got {token!r}")
        if not _is_number(value) or not -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS:
            raise SplitspecError(f"logit_bias values must be numbers in [-100, 100], got {value!r} for token {token}")
    return {token: float(value) for token, value in bias.items()}
