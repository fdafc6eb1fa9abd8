"""The one small interface every drafter offers, in-process and behind the proposer service."""

from __future__ import annotations

from abc import ABC, abstractmethod

from splitspec.drafter_traits import DrafterTraits
from splitspec.drafts import Draft, DraftRequest, HiddenStates


class Proposer(ABC):
    """Its class attributes say what it is (DrafterTraits), which the proposer service reports."""

    method: str
    samples_drafts: bool = False
    """True when sampled requests get drafts drawn from a q that is not one-hot (a draft model)."""
    hidden_states: HiddenStates = HiddenStates.NONE
    """What the drafter reads of the target's hidden states (DraftRequest.hidden_state)."""
    hidden_layers: tuple[int, ...] = ()
    """Which states: the inputs of these target layers, concatenated (EAGLE-3); () the final state."""
    sizes_own_drafts: bool = False
    """It drafts only what it expects accepted (suffix)."""
    remembers_outputs: bool = False
    """It keeps past outputs (finish) to draft from."""
    drafts_after_rejection: bool = False
    """It honours DraftRequest.excluded_first with its next-best guess."""

    @property
    def needs_hidden_states(self) -> bool:
        return self.hidden_states != HiddenStates.NONE

    def traits(self, num_speculative_tokens: int, max_num_speculative_tokens: int) -> DrafterTraits:
        return DrafterTraits(
            method=self.method,
            num_speculative_tokens=num_speculative_tokens,
            max_num_speculative_tokens=max_num_speculative_tokens,
            samples_drafts=self.samples_drafts,
            hidden_states=self.hidden_states,
            hidden_layers=self.hidden_layers,
            sizes_own_drafts=self.sizes_own_drafts,
            remembers_outputs=self.remembers_outputs,
            drafts_ahead=not self.needs_hidden_states,  # assumed tokens have no hidden states yet
            drafts_after_rejection=self.drafts_after_rejection and not self.needs_hidden_states,
        )

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
