"""Which drafter drafts a request's next rounds: the verifier's own n-gram lookup, or the proposer.

The verifier drafts n-grams with no hop: its rounds are pipelined and never wait for a proposer, but it
drafts only where the context repeats itself. The proposer (a draft model) drafts everywhere, at the
price of a trip to it and its drafting time. Neither wins everywhere, so the gateway measures both for
each request, and moves it to the other drafter when that yields `margin` times the tokens per second (a
move drains the steps in flight, so it must pay for itself):

- a drafter not yet tried is priced from its parts: its acceptance, how often the n-gram lookup finds a
  match, the verifier's pass costs, the link to the proposer and its drafting time (adaptive_k);
- once both have run, their realized tokens per second decide: committed tokens over the time between
  results, which also holds what the parts miss (a proposer that shares the verifier's cores, say).

A request starts on the verifier's n-grams, which cost nothing to try, and stays on a drafter for at
least `min_rounds`. Every `probe_every` rounds it tries the other one again, since whether the text
repeats itself changes along the output; each probe doubles the wait for the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from splitspec.adaptive_k import AcceptanceEstimate, Ewma, PositionalAcceptance

MAX_PROBE_EVERY = 1024


@dataclass
class _Realized:
    """A drafter's committed tokens and seconds per round, averaged over its recent rounds."""

    tokens: Ewma = field(default_factory=lambda: Ewma(0.3))
    seconds: Ewma = field(default_factory=lambda: Ewma(0.3))

    @property
    def rate(self) -> float | None:
        if self.tokens.value is None or not self.seconds.value:
            return None
        return self.tokens.value / self.seconds.value


@dataclass
class DrafterChoice:
    local: PositionalAcceptance = field(default_factory=PositionalAcceptance)
    """Acceptance of the verifier's n-gram drafts by position, in the rounds where it found a match."""
    remote: PositionalAcceptance = field(default_factory=PositionalAcceptance)
    matches: AcceptanceEstimate = field(default_factory=AcceptanceEstimate)
    """The share of rounds asked for n-gram drafts in which the verifier drafted any."""
    uses_local: bool = True
    margin: float = 1.1
    min_rounds: int = 4
    probe_every: int = 64
    rounds: int = 0
    """Rounds since the last move."""
    realized: dict[bool, _Realized] = field(default_factory=lambda: {True: _Realized(), False: _Realized()})
    """By drafter (True: the verifier's n-grams)."""

    @property
    def acceptance(self) -> PositionalAcceptance:
        """The estimate of the drafter in use, which sizes its drafts."""
        return self.local if self.uses_local else self.remote

    def record(self, asked: int, drafted: int, accepted: int, tree_path: list[int] | None = None) -> None:
        """A round drafted by the drafter in use: `asked` drafts wanted, `drafted` made, `accepted` kept
        (tree_path: which of a tree's, by index)."""
        self.rounds += 1
        self.acceptance.update(drafted, accepted, tree_path)
        (self.remote if self.uses_local else self.local).update(0, 0)
        if self.uses_local and asked:
            self.matches.update(1, 1 if drafted else 0)
        elif not self.uses_local:
            self.matches.update(0, 0)

    def timed(self, tokens: int, seconds: float) -> None:
        """A round of the drafter in use committed `tokens`, `seconds` after the round before it."""
        realized = self.realized[self.uses_local]
        realized.tokens.add(tokens)
        realized.seconds.add(seconds)

    def wants_other(self, predicted: Callable[[bool], float]) -> bool:
        """Whether to move to the drafter not in use; predicted(local): a drafter's expected tokens per
        second from its parts."""
        if self.rounds < self.min_rounds:
            return False
        if self.rounds >= self.probe_every:
            return True
        current, other = self.realized[self.uses_local].rate, self.realized[not self.uses_local].rate
        if current is not None and other is not None:
            return other > current * self.margin
        return predicted(not self.uses_local) > predicted(self.uses_local) * self.margin

    def switch(self) -> None:
        if self.rounds >= self.probe_every:
            self.probe_every = min(2 * self.probe_every, MAX_PROBE_EVERY)
        self.uses_local, self.rounds = not self.uses_local, 0
