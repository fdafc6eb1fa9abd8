"""Which drafter drafts a request's next rounds: the verifier's own n-gram lookup, or the proposer.

The verifier drafts n-grams with no hop: its rounds are pipelined and never wait for a proposer, but it
drafts only where the context repeats itself. The proposer (a draft model) drafts everywhere, at the
price of a trip to it and its drafting time. Neither wins everywhere, so the gateway measures both for
each request: each drafter's acceptance, and how often the n-gram lookup finds a match at all. Each
round it prices both with the verifier's pass costs and the measured round trips (adaptive_k), and moves
to the other drafter when that yields `margin` times the tokens per second: a move drains the steps in
flight, so it must pay for itself.

A request starts on the verifier's n-grams, which cost nothing to try, and stays on a drafter for at
least `min_rounds` so that the move is decided on measurements. On the proposer it goes back to try the
n-grams every `probe_every` rounds, since whether the text repeats itself changes along the output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from splitspec.adaptive_k import AcceptanceEstimate


@dataclass
class DrafterChoice:
    local: AcceptanceEstimate = field(default_factory=AcceptanceEstimate)
    """Acceptance of the verifier's n-gram drafts, in the rounds where it found a match."""
    remote: AcceptanceEstimate = field(default_factory=AcceptanceEstimate)
    matches: AcceptanceEstimate = field(default_factory=AcceptanceEstimate)
    """The share of rounds asked for n-gram drafts in which the verifier drafted any."""
    uses_local: bool = True
    margin: float = 1.1
    min_rounds: int = 4
    probe_every: int = 64
    rounds: int = 0
    """Rounds since the last move."""

    @property
    def acceptance(self) -> AcceptanceEstimate:
        """The estimate of the drafter in use, which sizes its drafts."""
        return self.local if self.uses_local else self.remote

    def record(self, asked: int, drafted: int, accepted: int) -> None:
        """A round drafted by the drafter in use: `asked` drafts wanted, `drafted` made, `accepted` kept."""
        self.rounds += 1
        self.acceptance.update(drafted, accepted)
        (self.remote if self.uses_local else self.local).update(0, 0)
        if self.uses_local and asked:
            self.matches.update(1, 1 if drafted else 0)
        elif not self.uses_local:
            self.matches.update(0, 0)

    def wants_other(self, value: Callable[[bool], float]) -> bool:
        """Whether to move to the drafter not in use; value(local): a drafter's expected tokens per second."""
        if self.rounds < self.min_rounds:
            return False
        if not self.uses_local and self.rounds >= self.probe_every:
            return True
        return value(not self.uses_local) > value(self.uses_local) * self.margin

    def switch(self) -> None:
        self.uses_local, self.rounds = not self.uses_local, 0
