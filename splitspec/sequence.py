"""One request's state inside the engine: its committed tokens and how generation should stop."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from splitspec.errors import SplitspecError
from splitspec.incremental_decoder import IncrementalDecoder
from splitspec.output_grammar import GrammarState
from splitspec.outputs import FinishReason, SpeculationStats
from splitspec.sampling_params import SamplingParams
from splitspec.token_ban import TokenBan
from splitspec.token_logprobs import Logprob
from splitspec.token_penalties import TokenPenalties

SEED_BITS = 63
"""Requests without a seed get a random one this wide: it travels as an int64 in the engine and on the
wire."""


@dataclass
class Sequence:
    seq_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    seed: int
    tokens: list[int] = field(default_factory=list)  # prompt followed by every committed output token
    stats: SpeculationStats = field(default_factory=SpeculationStats)
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None
    text: str = ""  # the output's text up to the stop string that stopped it, set when one does
    token_ban: TokenBan | None = None  # min_tokens: what the target may not emit yet
    penalties: TokenPenalties | None = None  # presence, frequency and repetition penalties
    grammar: GrammarState | None = field(default=None, repr=False, compare=False)  # structured output
    logprobs: list[dict[int, Logprob]] | None = None  # per output token, when the request asks for them
    prompt_logprobs: list[dict[int, Logprob]] | None = None  # per prompt token after the first, once computed
    # the StopChecker's running decode of the output, kept while the request has stop strings
    decoded_output: IncrementalDecoder | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.tokens:
            self.tokens = list(self.prompt_token_ids)
        if self.params.logprobs is not None and self.logprobs is None:
            self.logprobs = []

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.tokens[len(self.prompt_token_ids) :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.tokens) - len(self.prompt_token_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


def check_prompt(prompt_token_ids: list[int], vocab_size: int, max_model_len: int) -> None:
    """Raise SplitspecError unless the prompt is non-empty, in the vocabulary, and leaves room in the
    context for at least one generated token."""
    if not prompt_token_ids:
        raise SplitspecError("the prompt is empty")
    if len(prompt_token_ids) >= max_model_len:
        raise SplitspecError(
            f"the prompt has {len(prompt_token_ids)} tokens, the model's context is {max_model_len}; shorten the prompt"
        )
    bad = next((t for t in prompt_token_ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise SplitspecError(f"prompt_token_ids must be in [0, {vocab_size}); got {bad}")


def request_seed(params: SamplingParams, rng: random.Random) -> int:
    """The request's own seed, or a fresh one: seeded noise is keyed by it, so every sequence has one.
    Any integer is a seed; each is taken modulo 2**63, so that every seed fits the wire's unsigned and
    the kernels' signed 64-bit fields and means the same in-process and through the services."""
    return params.seed % (1 << SEED_BITS) if params.seed is not None else rng.getrandbits(SEED_BITS)
