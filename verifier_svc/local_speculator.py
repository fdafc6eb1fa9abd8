"""A speculator beside the target (serve-verifier --speculative-config): an EAGLE-3, EAGLE or MLP
speculator head that drafts inside the verifier process, for steps that ask with
LocalDraft.speculator.

The head reads the target's hidden states, and here it reads them where the target computed them: no
state crosses a network (an 8B target's three EAGLE-3 states are 24 KiB a token in bfloat16), and a
round needs no proposer, so it crosses one link, as the verifier's n-grams do. The head drafts in the
pass thread, batched over the steps of a pass, right before the pass that verifies its drafts; that
pass's states for the tokens it commits feed the head's next draft.
"""

from __future__ import annotations

from typing import Protocol

import torch

from splitspec.drafter_traits import DrafterTraits
from splitspec.drafts import Draft, DraftRequest, HiddenStates
from splitspec.errors import SplitspecError
from splitspec.sampling_params import SamplingParams


class HeadDrafter(Protocol):
    """What the verifier uses of a drafter (proposer_svc.proposer.Proposer, which the command builds:
    the verifier does not import the proposer's package)."""

    method: str
    hidden_states: HiddenStates
    hidden_layers: tuple[int, ...]

    @property
    def needs_hidden_states(self) -> bool: ...

    def traits(self, num_speculative_tokens: int, max_num_speculative_tokens: int) -> DrafterTraits: ...

    def propose(self, requests: list[DraftRequest]) -> list[Draft]: ...

    def release(self, seq_id: str) -> None: ...


class LocalSpeculator:
    def __init__(self, proposer: HeadDrafter, num_speculative_tokens: int, max_drafts_per_step: int) -> None:
        if not proposer.needs_hidden_states:
            raise SplitspecError(
                f"a verifier drafts beside its target only with a head that reads the target's hidden states "
                f"(eagle3, eagle, mlp_speculator), not {proposer.method}: serve it on a proposer"
            )
        self.proposer = proposer
        self.traits: DrafterTraits = proposer.traits(
            num_speculative_tokens, min(num_speculative_tokens, max_drafts_per_step)
        )
        self._unread: dict[str, torch.Tensor] = {}  # states of committed tokens the head has not been fed

    @property
    def hidden_states(self) -> HiddenStates:
        return self.proposer.hidden_states

    @property
    def hidden_layers(self) -> tuple[int, ...]:
        return self.proposer.hidden_layers

    def draft(self, steps: list[tuple[str, list[int], SamplingParams, int, int, int]]) -> list[Draft]:
        """steps: (seq_id, committed tokens, params, seed, drafts wanted, tree width) -> one draft each
        (a tree where the width is above 1 and the head branches), in one batched call of the head."""
        requests = [
            DraftRequest(
                seq_id=seq_id,
                token_ids=tokens,
                num_tokens=num_tokens,
                temperature=params.temperature,
                top_k=params.top_k,
                seed=seed,
                hidden_state=self._unread.pop(seq_id, None),
                tree_width=tree_width,
            )
            for seq_id, tokens, params, seed, num_tokens, tree_width in steps
        ]
        drafts = self.proposer.propose(requests)
        return [d.first(r.num_tokens) for d, r in zip(drafts, requests)]

    def received(self, seq_id: str, states: torch.Tensor | None) -> None:
        """A pass's states for the tokens it committed: every row kept until the next draft (ALL), or
        the newest alone (LAST)."""
        if states is None:
            return
        held = self._unread.get(seq_id)
        if self.hidden_states == HiddenStates.ALL and held is not None:
            states = torch.cat([held, states])
        self._unread[seq_id] = states

    def release(self, seq_id: str) -> None:
        self._unread.pop(seq_id, None)
        self.proposer.release(seq_id)
