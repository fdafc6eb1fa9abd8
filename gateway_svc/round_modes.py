"""The three ways a request's steps go to the verifier, one class each (gateway_svc.round_plan decides
which; docs/round-path.md has the table). Each sends steps and hands back the oldest unanswered one:

- PipelinedRounds: no round waits for a proposer, so several steps are in flight at once
  (VerifyStep.pipelined), each drafted on the verifier (its n-grams, or a remote draft) or not at all.
- AheadRounds: a proposer drafts at the gateway; while the oldest step is verified it drafts the next
  round for the likeliest outcome, and that draft goes to the verifier at once, assuming that outcome
  (gateway_svc.ahead_pipeline). A wrong guess costs a step with no drafts, never a token.
- OneStepRounds: one step at a time, its draft fetched first (or made ahead during the last round).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Protocol

from gateway_svc.backends import ProposerBackend, VerifierBackend
from gateway_svc.draft_ahead import AheadDraft
from gateway_svc.placement import Placement
from gateway_svc.proposer_drafts import ProposerDrafts
from gateway_svc.request_state import Pipeline, Request, Sent, plan_step
from gateway_svc.round_plan import RequestPlan, RoundMode
from splitspec.drafts import Draft
from splitspec.metrics import RequestMetrics
from splitspec_protos import splitspec_v1_pb2 as pb

MAX_PIPELINE_DEPTH = 4


class RoundServices(Protocol):
    """What the modes use of the gateway (GatewayCore)."""

    placement: Placement
    drafts: ProposerDrafts
    metrics: RequestMetrics

    def num_drafts(self, req: Request, verifier: VerifierBackend, proposer: ProposerBackend | None) -> int: ...


class Rounds(ABC):
    def __init__(self, core: RoundServices, req: Request) -> None:
        self.core, self.req = core, req
        self.pipe = Pipeline()

    @property
    def in_flight(self) -> int:
        """Steps sent and not yet handed back: a move or a drafter switch waits until there are none."""
        return len(self.pipe.steps)

    @abstractmethod
    async def next_step(self, verifier: VerifierBackend, holding: bool) -> Sent:
        """Send what steps there is room for (none while `holding`: the sequence is about to move or
        change drafters) and hand back the oldest."""

    async def heard(self, sent: Sent) -> None:  # noqa: B027 - a hook: the modes that draft ahead use it
        """The step's result came: wait for what was drafted during it, before its tokens are committed."""

    def committed(self, sent: Sent, result: pb.StepResult, round_tokens: list[int], finished: bool) -> None:  # noqa: B027
        """What the step's outcome (the tokens it added) teaches of the drafts made ahead."""

    async def settle(self) -> None:
        """Wait for a draft being made ahead, so that what the proposer holds is known; its draft is moot."""
        if self.pipe.ahead is not None:
            await self.pipe.ahead

    def cancel(self) -> None:
        """Stop waiting for every step and draft: their answers are no longer wanted."""
        self.pipe.cancel()

    def _room(self, verifier: VerifierBackend) -> int:
        """How many steps to keep in flight: as many as keep the verifier busy across the link, and no
        more than the request may still need (each step commits at least one token)."""
        wanted = _pipeline_depth(verifier)
        seq = self.req.seq
        if seq.params.max_tokens is not None:
            wanted = min(wanted, seq.params.max_tokens - seq.num_output_tokens)
        return max(1, wanted)


class PipelinedRounds(Rounds):
    async def next_step(self, verifier: VerifierBackend, holding: bool) -> Sent:
        if not holding:
            self._fill(verifier)
        return self.pipe.steps.popleft()

    def _fill(self, verifier: VerifierBackend) -> None:
        """Send pipelined steps, each drafted on the verifier (by its n-grams, or by asking the proposer:
        direct_drafts) or not at all, until the pipeline is full."""
        core, req = self.core, self.req
        seq, slot, plan = req.seq, req.slot, req.plan
        room = self._room(verifier)
        if plan.direct_drafts and plan.fixed_k:
            room = 1  # each step's K must be the one in-process decoding drafts at that length: sent last
        while len(self.pipe.steps) < room:
            local = remote = None
            if req.local:
                k = core.num_drafts(req, verifier, None)
                local = local_draft(plan, k) if k > 0 else None
            elif plan.direct_drafts and req.num_speculative_tokens > 0 and core.placement.available_proposer(req):
                k = core.num_drafts(req, verifier, slot.backend)
                remote = core.drafts.remote_draft(req, k)  # even for k = 0: the verifier keeps the hidden states
            else:
                k = 0
            plan_step(verifier, req, k)
            step = verifier.step(
                seq.seq_id, len(seq.tokens), Draft(), local, pipelined=True, remote=remote, every_draft=plan.every_draft
            )
            self.pipe.steps.append(Sent(asyncio.create_task(step), False, k, slot.backend if remote else None))


class AheadRounds(Rounds):
    async def next_step(self, verifier: VerifierBackend, holding: bool) -> Sent:
        if not holding:
            await self._fill(verifier)
        return await self._oldest(verifier, holding)

    def committed(self, sent: Sent, result: pb.StepResult, round_tokens: list[int], finished: bool) -> None:
        self.pipe.prediction.committed(round_tokens, len(self.pipe.steps))
        if sent.made_ahead:
            self.core.metrics.draft_ahead.add(1, {"outcome": "hit" if result.num_drafted else "miss"})

    async def _fill(self, verifier: VerifierBackend) -> None:
        """With nothing in flight, send a step: with the draft made ahead if its guess came true, else
        with a fresh draft. Then have the proposer draft ahead for the steps in flight."""
        core, req, pipe = self.core, self.req, self.pipe
        if not pipe.steps:
            if pipe.ahead is not None:
                pipe.ready, pipe.ahead = await pipe.ahead, None
            if not self._send_ready(verifier):
                if req.slot.backend is not None:  # leave a draining proposer even in rounds that draft nothing
                    core.placement.available_proposer(req)
                k = core.num_drafts(req, verifier, req.slot.backend)
                draft = await core.drafts.draft(req, k) if k > 0 else Draft()
                self._send(verifier, [], draft, made_ahead=False)
        self._ask_ahead(verifier)

    async def _oldest(self, verifier: VerifierBackend, holding: bool) -> Sent:
        """Wait for the oldest step in flight; a draft ahead that arrives meanwhile goes to the verifier
        at once, as the next step (unless `holding`), and the proposer drafts ahead of that one."""
        pipe = self.pipe
        while True:
            oldest = pipe.steps[0]
            waiting = {oldest.step} if pipe.ahead is None else {oldest.step, pipe.ahead}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if pipe.ahead is not None and pipe.ahead.done():
                pipe.ready, pipe.ahead = pipe.ahead.result(), None
                if not holding and self._send_ready(verifier):
                    self._ask_ahead(verifier)
            if oldest.step.done():
                return pipe.steps.popleft()

    def _send(self, verifier: VerifierBackend, assumed: list[int], draft: Draft, made_ahead: bool) -> None:
        seq = self.req.seq
        plan_step(verifier, self.req, len(draft.token_ids))
        step = verifier.step(
            seq.seq_id,
            len(seq.tokens),
            draft,
            None,
            pipelined=True,
            assumed=assumed,
            every_draft=self.req.plan.every_draft,
        )
        self.pipe.steps.append(Sent(asyncio.create_task(step), made_ahead, len(draft.token_ids)))
        self.pipe.prediction.sent(assumed, draft.main_chain())

    def _send_ready(self, verifier: VerifierBackend) -> bool:
        """Send the draft made ahead as the next step if there is room and it still fits what the steps
        in flight are expected to commit; drop it if it no longer can."""
        pipe, seq = self.pipe, self.req.seq
        reply = pipe.ready
        if reply is None or len(pipe.steps) >= self._room(verifier):
            return False
        pipe.ready = None
        assumed = pipe.prediction.assumed_for(reply, seq.tokens[reply.base_len :], len(pipe.steps))
        if assumed is None:
            self.core.metrics.draft_ahead.add(1, {"outcome": "miss"})
            return False
        self._send(verifier, assumed, reply.after_guess, made_ahead=True)
        return True

    def _ask_ahead(self, verifier: VerifierBackend) -> None:
        """Have the proposer draft after what the steps in flight are expected to commit, if a step with
        that draft could be sent once the oldest returns."""
        core, req, pipe = self.core, self.req, self.pipe
        if pipe.ahead is not None or pipe.ready is not None or not pipe.steps or pipe.prediction.tail is None:
            return
        if len(pipe.steps) > self._room(verifier) or not core.drafts.drafts_ahead(req):
            return
        k = core.num_drafts(req, verifier, req.slot.backend)
        if k > 0:
            pipe.ahead = asyncio.create_task(core.drafts.draft_ahead(req, list(pipe.prediction.tail), k))


class OneStepRounds(Rounds):
    def __init__(self, core: RoundServices, req: Request) -> None:
        super().__init__(core, req)
        self.ahead_task: asyncio.Task | None = None  # the next round's draft, being made during this one
        self.ahead: AheadDraft | None = None  # ... made
        self.pre_drafted: Draft | None = None  # this round's draft, drafted ahead during the last round

    async def next_step(self, verifier: VerifierBackend, holding: bool) -> Sent:
        core, req = self.core, self.req
        seq, slot, plan = req.seq, req.slot, req.plan
        if slot.backend is not None:  # leave a draining proposer even in rounds that draft nothing
            core.placement.available_proposer(req)
        k = core.num_drafts(req, verifier, slot.backend)
        plan_step(verifier, req, k)
        local = local_draft(plan, k) if k > 0 and req.local else None
        remote = remote_drafter = None
        if k > 0 and local is None and plan.direct_drafts and core.placement.available_proposer(req):
            remote, remote_drafter = core.drafts.remote_draft(req, k), slot.backend
        draft = Draft()
        if k > 0 and local is None and not plan.direct_drafts:
            if self.pre_drafted is not None:
                draft = self.pre_drafted.first(k)
            else:
                draft = await core.drafts.draft(req, k)
        self.pre_drafted = None
        if k > 0 and local is None and not plan.direct_drafts and core.drafts.drafts_ahead(req):
            assumed = draft.main_chain().token_ids  # a tree's drafted ahead as if its main chain is accepted
            self.ahead_task = asyncio.create_task(core.drafts.draft_ahead(req, assumed, k))
        step = verifier.step(seq.seq_id, len(seq.tokens), draft, local, remote=remote, every_draft=req.plan.every_draft)
        return Sent(step, False, k, remote_drafter)

    async def heard(self, sent: Sent) -> None:
        if self.ahead_task is not None:
            self.ahead, self.ahead_task = await self.ahead_task, None

    def committed(self, sent: Sent, result: pb.StepResult, round_tokens: list[int], finished: bool) -> None:
        ahead, self.ahead = self.ahead, None
        if ahead is not None and not finished:
            self.pre_drafted = ahead.next_draft(round_tokens)
            self.core.metrics.draft_ahead.add(1, {"outcome": "miss" if self.pre_drafted is None else "hit"})

    async def settle(self) -> None:
        if self.ahead_task is not None:
            await self.ahead_task
            self.ahead_task = None

    def cancel(self) -> None:
        if self.ahead_task is not None:
            self.ahead_task.cancel()
            self.ahead_task = None
        self.ahead = self.pre_drafted = None


ROUNDS_BY_MODE: dict[RoundMode, type[Rounds]] = {
    RoundMode.PIPELINED: PipelinedRounds,
    RoundMode.DRAFTED_AHEAD: AheadRounds,
    RoundMode.ONE_STEP: OneStepRounds,
}


def local_draft(plan: RequestPlan, num_tokens: int) -> pb.LocalDraft:
    """What a step drafted on the verifier asks it for: its speculator's drafts, or its n-grams'."""
    if plan.local_speculator:
        return pb.LocalDraft(num_tokens=num_tokens, speculator=True, tree_width=plan.tree_width)
    lookup_min, lookup_max = plan.local_ngram
    return pb.LocalDraft(
        num_tokens=num_tokens, prompt_lookup_min=lookup_min, prompt_lookup_max=lookup_max, tree_width=plan.tree_width
    )


def rounds_for(core: RoundServices, req: Request) -> Rounds:
    """The round mode the request is in now, with nothing in flight."""
    return ROUNDS_BY_MODE[req.mode](core, req)


def _pipeline_depth(verifier: VerifierBackend) -> int:
    """Steps to keep in flight: the one verified now, and enough behind it that the next is at the
    verifier before the pass ends, however long the link (up to MAX_PIPELINE_DEPTH)."""
    link, cost = verifier.link.value, verifier.cost_model
    if link is None or cost is None:
        return 2
    return min(MAX_PIPELINE_DEPTH, 2 + int(link // max(cost.cost(1), 1e-6)))
