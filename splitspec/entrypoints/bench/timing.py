"""Per-request timing: when each token arrived, and the figures derived from it."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class RequestTiming:
    config: str
    prompt: str
    workload: str
    start: float
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (time, tokens that arrived)
    token_ids: list[int] = field(default_factory=list)
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    drafted_per_position: list[int] = field(default_factory=list)
    accepted_per_position: list[int] = field(default_factory=list)
    matches_reference: bool | None = None

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.arrivals)

    @property
    def elapsed(self) -> float:
        return (self.arrivals[-1][0] - self.start) if self.arrivals else 0.0

    @property
    def ttft(self) -> float:
        return self.arrivals[0][0] - self.start if self.arrivals else 0.0

    @property
    def tpot(self) -> float:
        """Time per output token after the first, as vLLM's serving benchmark: 0 with fewer than two."""
        n = self.num_tokens
        return (self.elapsed - self.ttft) / (n - 1) if n > 1 else 0.0

    def inter_token_latencies(self) -> list[float]:
        """A chunk of n tokens that arrives `gap` after the previous one counts as n tokens of gap / n."""
        out = []
        for (t0, _), (t1, n) in zip(self.arrivals, self.arrivals[1:]):
            out += [(t1 - t0) / n] * n
        return out

    def to_json(self) -> dict:
        return {
            "config": self.config,
            "workload": self.workload,
            "prompt": self.prompt,
            "num_tokens": self.num_tokens,
            "elapsed_s": self.elapsed,
            "ttft_s": self.ttft,
            "tokens_per_s": self.num_tokens / self.elapsed if self.elapsed else 0.0,
            "rounds": self.rounds,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "drafted_per_position": self.drafted_per_position,
            "accepted_per_position": self.accepted_per_position,
            "matches_k0": self.matches_reference,
        }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Summary:
    config: str
    tokens: int
    seconds: float
    ttft_mean: float
    itl_p50: float
    itl_p99: float
    mean_tokens_per_round: float | None
    acceptance_per_position: list[float]
    matches: str

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def summarise(config: str, timings: list[RequestTiming]) -> Summary:
    itl = [x for t in timings for x in t.inter_token_latencies()]
    rounds = sum(t.rounds for t in timings)
    drafted = [0] * max((len(t.drafted_per_position) for t in timings), default=0)
    accepted = list(drafted)
    for t in timings:
        for i, d in enumerate(t.drafted_per_position):
            drafted[i] += d
        for i, a in enumerate(t.accepted_per_position):
            accepted[i] += a
    checked = [t.matches_reference for t in timings if t.matches_reference is not None]
    return Summary(
        config=config,
        tokens=sum(t.num_tokens for t in timings),
        seconds=sum(t.elapsed for t in timings),
        ttft_mean=statistics.fmean(t.ttft for t in timings) if timings else 0.0,
        itl_p50=percentile(itl, 50),
        itl_p99=percentile(itl, 99),
        mean_tokens_per_round=(sum(t.num_tokens for t in timings) / rounds) if rounds else None,
        acceptance_per_position=[a / d if d else 0.0 for a, d in zip(accepted, drafted)],
        matches=f"{sum(checked)}/{len(checked)}" if checked else "-",
    )
