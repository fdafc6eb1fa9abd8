"""One request's state inside the engine: its committed tokens and how generation should stop."""

from __future__ import annotations

from dataclasses import dataclass, field

from splitspec.outputs import SpeculationStats
from splitspec.sampling_params import SamplingParams


@dataclass
class Sequence:
    seq_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    seed: int
    tokens: list[int] = field(default_factory=list)  # prompt followed by every committed output token
    stats: SpeculationStats = field(default_factory=SpeculationStats)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    text: str = ""

    def __post_init__(self) -> None:
        if not self.tokens:
            self.tokens = list(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.tokens[len(self.prompt_token_ids) :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.tokens) - len(self.prompt_token_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
