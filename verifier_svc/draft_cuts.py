"""The verifier's say in how much of each draft a pass verifies, decided for the whole batch.

A gateway sizes a request's drafts from what it last heard of the verifier's passes; the verifier sees
the pass itself: every sequence in it, the rows they bring, and each one's acceptance by draft
position. Verifying the first k of a draft is lossless (the target's token follows the k-th), so the
verifier cuts each step's draft to the length that makes the pass's expected committed tokens per
second highest (splitspec.adaptive_k.choose_drafts), down to none. A step's K is an upper bound.

Which drafts may be cut: a greedy request's, and any draft whose tokens are one-hot (n-grams, suffix,
argmax drafters), since their positions are verified by the target's own seeded draw. A sampled
request's draft drawn from a q that is not one-hot keeps its length: which positions are drafted
changes its individual samples (never their law), and its seed must reproduce them.

Drafts made here by the verifier's speculator are sized before the head runs, so that cut drafts are
never made, and the head's measured time per draft is priced in.
"""

from __future__ import annotations

from dataclasses import dataclass

from splitspec.adaptive_k import Ewma, PassCostModel, PositionalAcceptance, RoundTrip, choose_drafts
from splitspec.drafts import Draft
from splitspec.sampling_params import SamplingParams


@dataclass(frozen=True)
class PlannedStep:
    """One step of a pass as the cut sees it."""

    seq_id: str
    rows: int
    """Tokens it brings besides drafts: 1 for a decode, the uncached tail after an eviction."""
    offered: int
    """Drafts it carries, or asks the verifier's speculator for."""
    cuttable: bool
    drafted_here: bool = False
    """Its drafts are made by the verifier's speculator for this pass (their time is priced)."""
    tree: bool = False
    """Its drafts are (or may be drafted as) a tree: sized by each token's chance to be on the kept
    path (PositionalAcceptance.node_gains) rather than a chain's."""


def may_cut(params: SamplingParams, draft: Draft) -> bool:
    """Whether a step's draft may be shortened without changing a seeded sample (module docstring)."""
    return params.greedy or all(q is None for q in draft.q)


class DraftCuts:
    """Per-sequence acceptance by position and the head's drafting time, and the cut they give."""

    def __init__(self) -> None:
        self.head_draft_s = Ewma(warm_up=2)  # the speculator's seconds per batched draft step
        self._acceptance: dict[str, PositionalAcceptance] = {}

    def plan(self, steps: list[PlannedStep], cost_model: PassCostModel | None) -> list[int]:
        """How many drafts each step verifies (at most what it offers), given the verifier's measured
        pass costs (None: every draft)."""
        if cost_model is None:
            return [s.offered for s in steps]
        base_rows = sum(s.rows + (0 if s.cuttable else s.offered) for s in steps)
        cut = [i for i, s in enumerate(steps) if s.cuttable and s.offered]
        fixed = [s for s in steps if not s.cuttable]
        base_tokens = sum(sum(self._gains(s)) for s in fixed) + len(steps) - len(cut)
        chains = [self._gains(steps[i]) for i in cut]
        drafting = RoundTrip(draft_token_s=self.head_draft_s.value or 0.0)
        chosen = choose_drafts(
            chains, base_rows, cost_model, base_tokens, drafting, [steps[i].drafted_here for i in cut]
        )
        verified = [s.offered for s in steps]
        for i, k in zip(cut, chosen):
            verified[i] = k
        return verified

    def record(self, seq_id: str, verified: int, accepted: int, path: list[int] | None = None) -> None:
        """A step's outcome; path: a tree's kept tokens by index in the draft."""
        self._acceptance.setdefault(seq_id, PositionalAcceptance()).update(verified, accepted, path)

    def release(self, seq_id: str) -> None:
        self._acceptance.pop(seq_id, None)

    def _gains(self, step: PlannedStep) -> list[float]:
        return self._acceptance.get(step.seq_id, PositionalAcceptance()).gains(step.offered, step.tree)
