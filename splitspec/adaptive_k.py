"""Choose how many tokens to draft per sequence so that speculation never costs more than it wins.

A verify pass with n tokens costs t(n), measured once on the engine's own runner (so the choices,
and with them a sampling draft model's individual samples, can differ between machines; greedy and
n-gram output never do). A sequence whose
drafts are accepted with probability a per position yields, with k drafts, E(k) = 1 + a + ... + a^k
tokens per pass. Each round the controller starts every sequence at k = 0 and hands out one more
draft at a time, to the sequence with the largest expected gain, while that raises the batch's
expected tokens per second; at low acceptance it therefore drafts nothing at all.

Across a network a round also pays what it spends outside the pass (RoundTrip): the link to the
verifier every round, and waiting for the proposer in rounds that draft. The first makes longer drafts
worth more (the link is shared by more tokens); the second makes drafting at all worth less, down to K=0
when a slow proposer costs more than its drafts win.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from splitspec.devices import synchronize
from splitspec.models.runner import ForwardInput, ModelRunner

_CALIBRATION_ROWS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 24, 32, 48, 64, 96, 128)


class PassCostModel:
    """Seconds per forward pass as a function of the tokens in it, interpolated between measurements."""

    def __init__(self, points: dict[int, float]) -> None:
        self.curve: tuple[list[int], list[float]] = (sorted(points), [points[n] for n in sorted(points)])
        """(rows, seconds), replaced whole on every change: a reader on another thread sees one curve."""

    @property
    def rows(self) -> list[int]:
        return self.curve[0]

    @property
    def seconds(self) -> list[float]:
        return self.curve[1]

    @staticmethod
    def calibrate(runner: ModelRunner, max_rows: int, repeats: int = 2) -> "PassCostModel | None":
        """None when the context is too short to measure even a one-token pass. Each measured pass
        verifies n tokens after a cached context, as a verify step does; the context is filled once
        and cut back to its length after every pass. Each size is timed `repeats` times and its fastest
        pass kept: the first pass of a shape pays one-time costs (kernels chosen, memory allocated),
        and a machine's noise only ever adds time. The curve then follows the passes served (observe),
        so start-up measures little: it delays every engine's first request."""
        seq_id = "__calibration__"
        context = [1] * min(32, runner.max_model_len // 4)
        if not context:
            return None
        points = {}
        try:
            runner.forward([ForwardInput(seq_id, context, 1)])
            for n in [r for r in _CALIBRATION_ROWS if r <= max_rows]:
                if len(context) + n > runner.max_model_len:
                    break
                samples = []
                for _ in range(max(repeats, 1)):
                    synchronize(runner.device)
                    start = time.perf_counter()
                    runner.forward([ForwardInput(seq_id, [1] * n, n)])
                    synchronize(runner.device)
                    samples.append(time.perf_counter() - start)
                    runner.truncate(seq_id, len(context))
                points[n] = min(samples)
        finally:
            runner.free(seq_id)
        return PassCostModel(_monotone(points)) if points else None

    def cost(self, rows: int) -> float:
        all_rows, seconds = self.curve
        if rows <= all_rows[0]:
            return seconds[0]
        for (n0, t0), (n1, t1) in zip(zip(all_rows, seconds), zip(all_rows[1:], seconds[1:])):
            if rows <= n1:
                return t0 + (t1 - t0) * (rows - n0) / (n1 - n0)
        if len(all_rows) == 1:
            return seconds[0] * rows
        (n0, t0), (n1, t1) = (all_rows[-2], seconds[-2]), (all_rows[-1], seconds[-1])
        return t1 + (t1 - t0) / (n1 - n0) * (rows - n1)

    def observe(self, rows: int, seconds: float, weight: float = 0.05) -> None:
        """A pass measured while serving: move the curve toward it, so that it follows what passes
        cost now (contexts grown long, a device shared or throttled) and not only what calibration
        measured once. The two calibrated points around `rows` move by their share of the
        interpolation; a pass larger than any measured adds its own point. The curve stays monotone."""
        all_rows, all_seconds = self.curve
        points = dict(zip(all_rows, all_seconds))
        if rows > all_rows[-1]:
            points[rows] = seconds
        else:
            upper = next(i for i, n in enumerate(all_rows) if n >= rows)
            lower = max(upper - 1, 0)
            n0, n1 = all_rows[lower], all_rows[upper]
            share_upper = 1.0 if n1 == n0 or rows <= n0 else (rows - n0) / (n1 - n0)
            error = seconds - self.cost(rows)
            points[n1] += weight * share_upper * error
            if lower != upper:
                points[n0] += weight * (1 - share_upper) * error
        smoothed = _monotone({n: max(t, 0.0) for n, t in points.items()})
        self.curve = (sorted(smoothed), [smoothed[n] for n in sorted(smoothed)])


def _monotone(points: dict[int, float]) -> dict[int, float]:
    """A pass with more tokens never costs less: smooth out timing noise."""
    out, best = {}, 0.0
    for n in sorted(points):
        best = max(best, points[n])
        out[n] = best
    return out


@dataclass
class AcceptanceEstimate:
    """Per-position acceptance with an optimistic Beta(3, 1) prior and exponential forgetting.

    Optimistic so that a new sequence tries drafting; rounds without drafts also forget, so a
    sequence that stopped drafting drifts back to the prior and probes again now and then.
    """

    accepted: float = 0.0
    drafted: float = 0.0
    decay: float = 0.9
    idle_decay: float = 0.98
    """Forgetting per round without drafts: slow, so that probing a poor drafter again is rare."""
    prior_accepted: float = 3.0
    prior_rejected: float = 1.0

    @property
    def rate(self) -> float:
        return (self.accepted + self.prior_accepted) / (self.drafted + self.prior_accepted + self.prior_rejected)

    def update(self, drafted: int, accepted: int) -> None:
        decay = self.decay if drafted else self.idle_decay
        self.accepted *= decay
        self.drafted *= decay
        if drafted:
            # a rejection ends the round: positions after it were never tested
            self.accepted += accepted
            self.drafted += min(drafted, accepted + 1)


@dataclass
class PositionalAcceptance:
    """A sequence's acceptance by draft position: a_j, the chance its (j + 1)-th draft is accepted when
    the ones before it were. Each position's record is shrunk toward the sequence's pooled rate
    (AcceptanceEstimate, with its prior) by `strength` pseudo-rounds, so that a position seldom
    reached borrows from the others; both forget at the pooled estimate's pace. N-gram drafts, which
    keep copying once they copy, are accepted more often deep in a draft than at its start; a single
    rate would cut them short.
    """

    pooled: AcceptanceEstimate = field(default_factory=AcceptanceEstimate)
    accepted: list[float] = field(default_factory=list)
    tested: list[float] = field(default_factory=list)
    strength: float = 2.0
    kept_by_rank: list[float] = field(default_factory=list)
    drafted_by_rank: list[float] = field(default_factory=list)
    """Tree drafts (node_gains): per index in a draft, how often that token was drafted and how often
    it was on the kept path, forgetting at the same pace."""

    @property
    def rate(self) -> float:
        return self.pooled.rate

    def update(self, drafted: int, accepted: int, path: list[int] | None = None) -> None:
        """One round: `drafted` tokens verified, `accepted` kept. path: a tree's kept tokens by index
        in the draft (None: a chain's first `accepted`)."""
        decay = self.pooled.decay if drafted else self.pooled.idle_decay
        self._update_ranks(drafted, set(range(accepted) if path is None else path), decay)
        self.pooled.update(drafted, accepted)
        tested = min(drafted, accepted + 1)  # a rejection ends the round: later positions were never tested
        grow = tested - len(self.tested)
        if grow > 0:
            self.tested.extend([0.0] * grow)
            self.accepted.extend([0.0] * grow)
        for j in range(len(self.tested)):
            self.tested[j] = self.tested[j] * decay + (j < tested)
            self.accepted[j] = self.accepted[j] * decay + (j < accepted)

    def conditional(self, position: int) -> float:
        """a_position, shrunk toward the pooled rate."""
        pooled = self.pooled.rate
        if position >= len(self.tested):
            return pooled
        return (self.accepted[position] + self.strength * pooled) / (self.tested[position] + self.strength)

    def chain(self, limit: int) -> list[float]:
        """The chance that the first 1, 2, ..., limit drafts are all accepted (choose_drafts' chains)."""
        out, p = [], 1.0
        for j in range(limit):
            p *= self.conditional(j)
            out.append(p)
        return out

    def gains(self, limit: int, tree: bool) -> list[float]:
        """The tokens each of `limit` drafts is expected to add: by position for a chain (chain), by
        index in the draft for a drafter that may draft trees (node_gains)."""
        return self.node_gains(limit) if tree else self.chain(limit)

    def node_gains(self, limit: int) -> list[float]:
        """For a drafter that may draft trees: the chance that the draft's 1st, 2nd, ..., limit-th token
        is on the kept path, i.e. the expected tokens it adds (choose_drafts' chains). Cutting a tree to
        its first k tokens keeps a tree (parents come first), and a token's acceptance does not depend
        on the tokens after it, so the first k bring the sum of the first k gains. A chain's gain at
        position j is chain(limit)[j]; a tree's is lower for a token among siblings and nonzero far
        past the longest path a chain of that many tokens would keep. Each index's record is shrunk
        toward chain()'s estimate by `strength` pseudo-rounds."""
        prior = self.chain(limit)
        out = []
        for j in range(limit):
            kept = self.kept_by_rank[j] if j < len(self.kept_by_rank) else 0.0
            drafted = self.drafted_by_rank[j] if j < len(self.drafted_by_rank) else 0.0
            out.append((kept + self.strength * prior[j]) / (drafted + self.strength))
        return out

    def _update_ranks(self, drafted: int, kept: set[int], decay: float) -> None:
        grow = drafted - len(self.drafted_by_rank)
        if grow > 0:
            self.drafted_by_rank.extend([0.0] * grow)
            self.kept_by_rank.extend([0.0] * grow)
        for j in range(len(self.drafted_by_rank)):
            self.drafted_by_rank[j] = self.drafted_by_rank[j] * decay + (j < drafted)
            self.kept_by_rank[j] = self.kept_by_rank[j] * decay + (j in kept)


class Ewma:
    """An exponentially weighted moving average; None until the first sample it keeps. warm_up: samples
    to drop first (a drafter's first calls pay one-time costs: kernels chosen, memory allocated; kept,
    one such call could price drafting out for good, since a drafter that drafts nothing is not timed)."""

    def __init__(self, weight: float = 0.2, warm_up: int = 0) -> None:
        self.weight = weight
        self.value: float | None = None
        self._to_drop = warm_up

    def add(self, sample: float) -> None:
        if self._to_drop > 0:
            self._to_drop -= 1
            return
        self.value = sample if self.value is None else self.value + self.weight * (sample - self.value)


@dataclass(frozen=True)
class RoundTrip:
    """Seconds a round spends outside the verify pass, as the gateway measures them."""

    link_s: float = 0.0
    """To the verifier and back: every round pays it."""
    draft_s: float = 0.0
    """Waiting for a draft: the proposer's link and the fixed part of drafting; rounds without drafts skip it."""
    draft_token_s: float = 0.0
    """Drafting time per draft token (a draft model's forward pass per token)."""
    ahead_rate: float = 0.0
    """With drafting ahead: the acceptance rate, since a round's draft is waited for only when the last
    round's k drafts and the guessed token were not all accepted (probability 1 - rate^(k+1))."""

    def seconds(self, k: int) -> float:
        if k == 0:
            return self.link_s
        return self.link_s + (1 - self.ahead_rate ** (k + 1)) * (self.draft_s + self.draft_token_s * k)


def choose_num_drafts(
    rates: list[float],
    limits: list[int],
    base_rows: int,
    cost: PassCostModel,
    base_tokens: float = 0.0,
    round_trip: RoundTrip = RoundTrip(),
) -> list[int]:
    """choose_drafts for sequences whose every draft position is accepted at one rate: rates are
    acceptance estimates, limits the most drafts each sequence may take."""
    return choose_drafts(
        [geometric_chain(r, n) for r, n in zip(rates, limits)], base_rows, cost, base_tokens, round_trip
    )


def geometric_chain(rate: float, limit: int) -> list[float]:
    """The chance that the first 1, 2, ..., limit drafts are all accepted, at `rate` per position."""
    return [rate ** (j + 1) for j in range(limit)]


def choose_drafts(
    chains: list[list[float]],
    base_rows: int,
    cost: PassCostModel,
    base_tokens: float = 0.0,
    round_trip: RoundTrip = RoundTrip(),
    priced: list[bool] | None = None,
) -> list[int]:
    """Drafts per sequence maximizing expected tokens per second of one pass.

    chains[i][j]: the chance that sequence i's first j + 1 drafts are all accepted, i.e. the expected
    extra tokens its (j + 1)-th draft brings (non-increasing in j); len(chains[i]) is the most drafts it
    may take. base_rows: tokens the pass carries anyway (one per sequence plus any prefill, plus whatever
    other sequences whose drafts are already decided bring); base_tokens: the tokens those other
    sequences are expected to yield. Each step gives some sequence more drafts at once (the first draft
    may cost more than later ones), choosing the best such move. round_trip: what a round costs besides
    the pass, with the drafting it waits for set by the longest draft among the `priced` sequences
    (default: all), those whose drafts are made for this pass.
    """
    priced = priced if priced is not None else [True] * len(chains)
    k = [0] * len(chains)
    expected = float(len(chains)) + base_tokens
    rows = base_rows

    while True:
        drafting = max((n for n, p in zip(k, priced) if p), default=0)  # drafts only grow: the longest so far
        best_rate = expected / (cost.cost(rows) + round_trip.seconds(drafting))
        best_move = None
        for i, chain in enumerate(chains):
            e = expected
            for j in range(1, len(chain) - k[i] + 1):
                e += chain[k[i] + j - 1]
                longest = max(drafting, k[i] + j) if priced[i] else drafting
                rate = e / (cost.cost(rows + j) + round_trip.seconds(longest))
                if rate > best_rate * (1 + 1e-9):
                    best_rate, best_move = rate, (i, j, e)
        if best_move is None:
            return k
        i, j, expected = best_move
        k[i] += j
        rows += j


def best_tokens_per_second(
    rate: float,
    limit: int,
    base_rows: int,
    cost: PassCostModel,
    base_tokens: float = 0.0,
    round_trip: RoundTrip = RoundTrip(),
) -> float:
    """The expected tokens per second of a pass in which one sequence, drafting at acceptance `rate`,
    takes its best number of drafts (choose_num_drafts, with the same arguments)."""
    (k,) = choose_num_drafts([rate], [limit], base_rows, cost, base_tokens, round_trip)
    expected = base_tokens + sum(rate**i for i in range(k + 1))
    return expected / (cost.cost(base_rows + k) + round_trip.seconds(k))
