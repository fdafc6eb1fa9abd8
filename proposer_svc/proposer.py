"""The one small interface every drafter offers, in-process and behind the proposer service."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from splitspec.config import HIDDEN_STATES_NONE
from splitspec.sparse_distribution import SparseDistribution


@dataclass
class DraftRequest:
    """Draft up to `num_tokens` tokens after the committed `token_ids` of `seq_id`.

    `temperature` 0 asks for deterministic (argmax) drafts; otherwise a drafter that samples uses the
    request's `seed` streams so drafts are reproducible.
    """

    seq_id: str
    token_ids: list[int]
    num_tokens: int
    temperature: float = 0.0
    top_k: int = -1
    seed: int = 0
    hidden_state: torch.Tensor | None = None
    """For drafters that read the target's final hidden states (Proposer.hidden_states): "last", the
    state [hidden] at the position that produced the last of `token_ids`; "all", the states [n, hidden]
    of the positions that produced the last n of `token_ids` not given before. None when the target has
    produced none for this sequence since the last request."""


@dataclass
class Draft:
    """Proposed tokens; `q[i]` is the exact distribution token i was drawn from, None for one-hot."""

    token_ids: list[int] = field(default_factory=list)
    q: list[SparseDistribution | None] = field(default_factory=list)


class Proposer(ABC):
    samples_drafts: bool = False
    """True when sampled requests get drafts drawn from a q that is not one-hot (a draft model)."""
    hidden_states: str = HIDDEN_STATES_NONE
    """What the drafter reads of the target's hidden states (DraftRequest.hidden_state): see
    splitspec.config.HIDDEN_STATES_*."""

    @property
    def needs_hidden_states(self) -> bool:
        return self.hidden_states != HIDDEN_STATES_NONE

    @abstractmethod
    def propose(self, requests: list[DraftRequest]) -> list[Draft]:
        """One draft per request, in order. State per sequence is updated from the committed tokens."""

    @abstractmethod
    def release(self, seq_id: str) -> None:
        """Forget a finished or cancelled sequence."""
