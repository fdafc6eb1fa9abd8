"""The drafts the gateway asks a request's proposer for: this round's, failing over to another proposer,
and the next round's made ahead (gateway_svc.draft_ahead); or, with direct drafts, what a step tells the
verifier to ask for itself (VerifyStep.remote_draft)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from gateway_svc.backends import ProposerBackend
from gateway_svc.draft_ahead import AheadDraft
from gateway_svc.placement import Placement
from gateway_svc.request_state import Request
from splitspec.draft_limits import MAX_REMOTE_DRAFT_TIMEOUT_S
from splitspec.drafts import Draft
from splitspec.errors import ServiceError
from splitspec.rpc import wire
from splitspec_protos import splitspec_v1_pb2 as pb


@dataclass
class ProposerDrafts:
    placement: Placement
    timeout_s: float = 5.0
    """How long a draft may take before its proposer counts as down."""

    async def draft(self, req: Request, k: int) -> Draft:
        """Drafts from the sequence's proposer, failing over to another; no drafts if none answers. A tree
        where the request's plan allows one and the drafter branches."""
        seq, slot = req.seq, req.slot
        for _ in range(len(self.placement.proposers)):
            if not self.placement.available_proposer(req):
                return Draft()
            try:
                result = await slot.backend.draft(
                    seq, slot.feed, k, self.timeout_s, req.trace_context, slot.deadline, req.plan.tree_width
                )
                return wire.draft_from_proto(result.drafts[:k])
            except (ConnectionError, asyncio.TimeoutError, ServiceError):
                slot.backend.mark_down()
        return Draft()

    @staticmethod
    def drafts_ahead(req: Request) -> bool:
        """Drafting ahead is on, the drafter can (it needs no hidden states, which assumed tokens lack),
        and its proposer is there."""
        backend = req.slot.backend
        return req.plan.draft_ahead and backend is not None and backend.available

    async def draft_ahead(self, req: Request, assumed: list[int], k: int) -> AheadDraft | None:
        """The proposer's draft after `assumed` (what the steps in flight are expected to commit): a guess
        at the verifier's next token, then up to k more. None when it has none: the next round drafts as
        usual."""
        seq, slot = req.seq, req.slot
        backend, committed = slot.backend, len(seq.tokens)
        try:
            result = await backend.draft_after(
                seq, slot.feed, k + 1, self.timeout_s, assumed, req.trace_context, slot.deadline
            )
        except (ConnectionError, asyncio.TimeoutError, ServiceError):
            backend.mark_down()  # the next round's draft fails over
            return None
        if result.needs_full_context:
            slot.feed.sent = 0
            return None
        slot.feed.sent = committed
        return AheadDraft(list(assumed), wire.draft_from_proto(result.drafts[: k + 1]), committed)

    def remote_draft(self, req: Request, k: int) -> pb.RemoteDraft:
        """A step's VerifyStep.remote_draft: k drafts from the request's proposer, fetched by the verifier."""
        backend = req.slot.backend
        return pb.RemoteDraft(
            num_tokens=k,
            proposer=backend.address,
            server_name=backend.server_name or "",
            num_prompt_tokens=len(req.seq.prompt_token_ids),
            timeout_s=min(self.timeout_s, MAX_REMOTE_DRAFT_TIMEOUT_S),
            skip_rejection_drafts=not req.plan.drafts_after_rejection,
            tree_width=req.plan.tree_width,
        )

    @staticmethod
    def heard_of_remote_draft(backend: ProposerBackend | None, result: pb.StepResult, asked: int) -> None:
        """A step with a remote draft from `backend` says how long it took, or that it did not answer
        (then the sequence moves to another proposer at its next step)."""
        if backend is None or not (result.draft_wait_s or result.proposer_failed):
            return
        if result.proposer_failed:
            backend.mark_down()
        elif asked > 0:
            backend.draft_token.add(max(0.0, result.draft_wait_s - (backend.link.value or 0.0)) / asked)
