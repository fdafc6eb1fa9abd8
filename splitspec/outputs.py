"""What `LLM.generate` returns, shaped like vLLM's `RequestOutput`."""

from __future__ import annotations

from dataclasses import dataclass, field

from splitspec.str_enum import StrEnum
from splitspec.token_logprobs import Logprob


class FinishReason(StrEnum):
    """Why a sequence stopped, as vLLM and the OpenAI API spell it: an EOS token, a stop token or stop
    string ("stop"), or max_tokens or the model's context ("length")."""

    STOP = "stop"
    LENGTH = "length"


@dataclass
class SpeculationStats:
    """Per-request speculation counters.

    `accepted_per_position[i]` counts rounds whose draft token at position i was accepted;
    `drafted_per_position[i]` counts rounds that proposed a token at position i.
    """

    num_rounds: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    drafted_per_position: list[int] = field(default_factory=list)
    accepted_per_position: list[int] = field(default_factory=list)

    def record_round(self, num_drafted: int, num_accepted: int) -> None:
        self.num_rounds += 1
        self.num_draft_tokens += num_drafted
        self.num_accepted_tokens += num_accepted
        grow = num_drafted - len(self.drafted_per_position)
        if grow > 0:
            self.drafted_per_position.extend([0] * grow)
            self.accepted_per_position.extend([0] * grow)
        for i in range(num_drafted):
            self.drafted_per_position[i] += 1
        for i in range(num_accepted):
            self.accepted_per_position[i] += 1

    @property
    def mean_accepted_tokens_per_round(self) -> float:
        """Tokens emitted per target pass: accepted drafts plus the one correction or bonus token."""
        if self.num_rounds == 0:
            return 0.0
        return (self.num_accepted_tokens + self.num_rounds) / self.num_rounds

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def acceptance_per_position(self) -> list[float]:
        return [a / d if d else 0.0 for a, d in zip(self.accepted_per_position, self.drafted_per_position)]


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: FinishReason | None
    stop_reason: int | str | None = None
    logprobs: list[dict[int, Logprob]] | None = None
    """When the request asked for them: per output token, vLLM's shape (splitspec.token_logprobs)."""


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    spec_stats: SpeculationStats
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    """When the request asked for them: None for the first prompt token, then each one's, vLLM's shape."""
