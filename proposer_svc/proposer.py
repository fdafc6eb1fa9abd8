"""The one small interface every drafter offers, in-process and behind the proposer service."""

from __future__ import annotations

from abc import ABC, abstractmethod

from splitspec.drafts import Draft, DraftRequest, HiddenStates


class Proposer(ABC):
    samples_drafts: bool = False
    """True when sampled requests get drafts drawn from a q that is not one-hot (a draft model)."""
    hidden_states: HiddenStates = HiddenStates.NONE
    """What the drafter reads of the target's hidden states (DraftRequest.hidden_state)."""

    @property
    def needs_hidden_states(self) -> bool:
        return self.hidden_states != HiddenStates.NONE

    @abstractmethod
    def propose(self, requests: list[DraftRequest]) -> list[Draft]:
        """One draft per request, in order. State per sequence is updated from the committed tokens."""

    @abstractmethod
    def release(self, seq_id: str) -> None:
        """Forget a finished or cancelled sequence."""

    def finish(self, seq_id: str, token_ids: list[int]) -> None:
        """The sequence ended with these committed tokens; forget it. Drafters that remember outputs
        (suffix) keep its last tokens first."""
        self.release(seq_id)
