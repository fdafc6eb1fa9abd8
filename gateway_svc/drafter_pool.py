"""Which drafter the gateway plans rounds for: the one its proposers report (ProposerInfo), never one
it guesses from its own flags.

The first proposer to report (in address order, at the gateway's first look) sets the pool's drafter; a proposer
whose drafter would plan rounds differently (another method, hidden states, sampling...) is refused:
it gets no sequences, and the gateway's log says why. A gateway told `--method` refuses proposers of
any other. The pool's K bound is the smallest any admitted proposer takes. The drafter, once set, stays
for the gateway's life: a fleet moved to another drafter takes a gateway restart.

Verifiers that hold a speculator beside their target (serve-verifier --speculative-config) report it
(VerifierInfo.speculator), and then it drafts every request, proposers or not: its rounds need no
proposer and no hidden state crosses a network, which a head on a proposer pod cannot match.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Iterable

from gateway_svc.backends import ProposerBackend, VerifierBackend
from splitspec.drafter_traits import DrafterTraits
from splitspec.rpc import wire


class DrafterPool:
    def __init__(self, expected_method: str | None = None, traits: DrafterTraits | None = None) -> None:
        """expected_method: the gateway's --method, if given. traits: the drafter, when already known."""
        self.expected_method = expected_method
        self.traits = traits
        self.speculator: DrafterTraits | None = None
        """The speculator the verifiers draft with beside their targets, once one has reported it."""

    @property
    def planned(self) -> tuple[DrafterTraits | None, bool]:
        """The drafter that plans requests' rounds, and whether it is the verifiers' speculator."""
        if self.speculator is not None:
            return self.speculator, True
        return self.traits, False

    def admit_verifiers(self, verifiers: Iterable[VerifierBackend]) -> None:
        """Take the speculator of the first verifier that reports one (the verifiers of a fleet hold
        the same); a gateway told --method of another drafter leaves it unused."""
        if self.speculator is not None:
            return
        for verifier in verifiers:
            if verifier.info is None or not verifier.info.HasField("speculator"):
                continue
            traits = wire.traits_from_proto(verifier.info.speculator)
            if self.expected_method is not None and traits.method != self.expected_method:
                continue
            self.speculator = traits
            print(
                f"splitspec gateway: the verifiers draft with {traits.method} beside their targets "
                f"(K={traits.num_speculative_tokens}); proposers are not asked",
                file=sys.stderr,
                flush=True,
            )
            return

    def admit(self, proposers: Iterable[ProposerBackend]) -> None:
        """Admit or refuse each proposer that has reported its drafter; set the pool's on the first."""
        admitted: list[DrafterTraits] = []
        for proposer in proposers:
            if proposer.traits is None:
                continue
            refusal = self._refusal(proposer.traits)
            if refusal is None and self.traits is None:
                self.traits = proposer.traits
            if refusal != proposer.refusal and refusal is not None:
                print(f"splitspec gateway: proposer {proposer.address} refused: {refusal}", file=sys.stderr, flush=True)
            proposer.refusal = refusal
            if refusal is None:
                admitted.append(proposer.traits)
        if admitted:
            bound = min(t.max_num_speculative_tokens for t in admitted)
            self.traits = replace(self.traits, max_num_speculative_tokens=bound)

    def _refusal(self, traits: DrafterTraits) -> str | None:
        if self.expected_method is not None and traits.method != self.expected_method:
            return f"it drafts with {traits.method}, and this gateway was told --method {self.expected_method}"
        if self.traits is None:
            return None
        difference = self.traits.planning_difference(traits)
        if difference is None:
            return None
        return f"its drafter plans rounds unlike the pool's {self.traits.method} ({difference})"
