"""What a drafter is, as far as planning a round goes: each proposer reports it (ProposerInfo), and
the gateway plans every round from it, never from its own flags."""

from __future__ import annotations

from dataclasses import dataclass

from splitspec.drafts import HiddenStates


@dataclass(frozen=True)
class DrafterTraits:
    method: str
    num_speculative_tokens: int
    """The drafts a round asks for unless the gateway or the request says otherwise."""
    max_num_speculative_tokens: int
    """The most drafts one call may ask for."""
    samples_drafts: bool = False
    """Sampled requests get drafts from a q that is not one-hot (a draft model): they keep a fixed K
    (splitspec.draft_limits.keeps_fixed_k)."""
    hidden_states: HiddenStates = HiddenStates.NONE
    """What it reads of the target's hidden states: the verifier returns them, the drafts carry them."""
    hidden_layers: tuple[int, ...] = ()
    """Which of them: the inputs of these target layers, concatenated (EAGLE-3); () the final state."""
    sizes_own_drafts: bool = False
    """It drafts only what it expects accepted (suffix): adaptive K is not put on top."""
    remembers_outputs: bool = False
    """It keeps past outputs (suffix): related requests go to one pod, and its rounds stay there."""
    drafts_ahead: bool = True
    """It drafts after assumed tokens (DraftStep.assumed_token_ids); drafters reading hidden states cannot."""
    drafts_after_rejection: bool = False
    """It honours DraftStep.excluded_first_token_ids with its next-best guess."""

    @property
    def drafts_ngrams(self) -> bool:
        """Its drafts are prompt lookup, which a verifier does as well itself (VerifyStep.local_draft)."""
        return self.method == "ngram"

    def planning_difference(self, other: DrafterTraits) -> str | None:
        """How `other` would plan rounds differently, in words; None when the two plan alike (their
        default and maximum K may differ: each request's K is bounded by the smallest maximum)."""
        ignored = {"num_speculative_tokens", "max_num_speculative_tokens"}
        for name in self.__dataclass_fields__:
            if name not in ignored and getattr(self, name) != getattr(other, name):
                return f"{name} is {getattr(other, name)!s}, not {getattr(self, name)!s}"
        return None
