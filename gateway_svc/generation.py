"""The per-request loop: propose on a proposer, verify on the sequence's verifier, stream, repeat.

While a round is verified the proposer already drafts the next one for the round's likeliest outcome
(gateway_svc.draft_ahead), so a round whose outcome matches needs no trip to the proposer after the
verifier's answer. Steps are pipelined (VerifyStep.pipelined): rounds that need no proposer keep
several steps in flight, and a draft made ahead goes to the verifier at once, assuming the outcome of
the steps before it (gateway_svc.ahead_pipeline); the verifier runs a sequence's steps back to back, so a
round does not wait for the link to the gateway. Requests that keep a fixed K, and drafters that read
hidden states, go one step at a time. With a draft-model proposer, each greedy request's rounds are
drafted by the verifier's own n-grams or by the proposer, whichever is measured faster
(gateway_svc.drafter_choice); a move waits until the steps in flight have returned.
Losing a proposer loses no output: the gateway moves the sequence to another proposer (sending it the
whole context) or, with none left, verifies with no drafts (K=0) — the same tokens, more slowly.
Losing a verifier loses none either: the gateway holds every committed token, so it starts the
sequence again on another verifier from that history and redoes the round. Seeded randomness is keyed
by position, so the tokens are those an uninterrupted run gives. With no verifier left it retries
with backoff until the request's deadline.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, NamedTuple

import grpc
from opentelemetry import trace

from gateway_svc.ahead_pipeline import Prediction
from gateway_svc.backends import ProposerBackend, VerifierBackend
from gateway_svc.detokenizer import IncrementalDetokenizer
from gateway_svc.draft_ahead import AheadDraft
from gateway_svc.drafter_choice import DrafterChoice
from gateway_svc.proposer_affinity import affinity_key, pick_pod
from splitspec.adaptive_k import AcceptanceEstimate, RoundTrip, best_tokens_per_second, choose_num_drafts
from splitspec.draft_limits import MAX_REMOTE_DRAFT_TIMEOUT_S, keeps_fixed_k, max_drafts
from splitspec.drafts import Draft, HiddenStates
from splitspec.errors import ServiceError
from splitspec.metrics import RequestMetrics, no_meter
from splitspec.outputs import SpeculationStats
from splitspec.rpc import wire
from splitspec.sampling_params import SamplingParams
from splitspec.sequence import Sequence, request_seed
from splitspec.stop_checker import StopChecker
from splitspec.tracing import carrier_of
from splitspec_protos import splitspec_v1_pb2 as pb

MAX_PIPELINE_DEPTH = 4


@dataclass
class Delta:
    token_ids: list[int]
    text: str
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    stats: SpeculationStats | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failovers: int = 0  # times the sequence moved to another verifier or proposer


@dataclass
class _ProposerSlot:
    """The sequence's proposer, what it holds, and the hidden states it has yet to receive."""

    backend: ProposerBackend | None = None
    sent: int = 0  # committed tokens the proposer already holds
    moves: int = 0  # times it left a proposer for another
    affinity: bytes | None = None  # with proposer_affinity, the pods it prefers (gateway_svc.proposer_affinity)
    hidden_state: pb.HiddenStates | None = None  # what the verifier sent since the last draft, passed on
    deadline: float = math.inf  # the client's, on time.monotonic(): passed on with every draft

    def use(self, backend: ProposerBackend | None) -> ProposerBackend | None:
        """Move to another proposer (which holds nothing of the sequence yet); the one left, if any."""
        left, self.backend, self.sent = self.backend, backend, 0
        if left is not None:
            left.num_sequences -= 1
        if backend is not None:
            backend.num_sequences += 1
        return left

    def receive(self, hidden: pb.HiddenStates, mode: HiddenStates) -> None:
        """ "last": keep the newest state; "all": append the rows, none may be skipped."""
        if mode == HiddenStates.ALL and self.hidden_state is not None:
            self.hidden_state = wire.concat_rows(self.hidden_state, hidden)
        else:
            self.hidden_state = hidden


class _InFlight(NamedTuple):
    """A pipelined step sent and not yet answered."""

    task: asyncio.Task
    made_ahead: bool  # its drafts were made ahead, assuming the outcome of the steps before it
    asked: int  # the drafts it asked for (those the verifier drafts itself, or those it carries)
    remote: ProposerBackend | None = None  # the proposer the verifier asks for its drafts (direct_drafts)


@dataclass
class _Pipeline:
    """A request's pipelined steps (VerifyStep.pipelined) and, with a remote drafter, its drafts ahead."""

    steps: deque[_InFlight] = field(default_factory=deque)
    """Oldest first."""
    prediction: Prediction = field(default_factory=Prediction)
    ahead: asyncio.Task | None = None  # the proposer making a draft ahead
    ready: AheadDraft | None = None  # a draft ahead made, waiting for room in the pipeline

    def cancel(self) -> None:
        """Stop waiting for the steps and the draft ahead: their answers are no longer wanted."""
        tasks = [step.task for step in self.steps] + ([self.ahead] if self.ahead is not None else [])
        for task in tasks:
            task.cancel()
            task.add_done_callback(_retrieve)
        self.steps.clear()
        self.ahead, self.ready, self.prediction = None, None, Prediction()


@dataclass
class _Request:
    """What the pipelined rounds of one request work from."""

    seq: Sequence
    num_speculative_tokens: int
    slot: _ProposerSlot
    drafters: DrafterChoice
    measured: bool
    """Whether its drafter may change between rounds, as measured (gateway_svc.drafter_choice)."""
    trace_context: pb.TraceContext | None
    span: trace.Span
    pipe: _Pipeline = field(default_factory=_Pipeline)

    @property
    def acceptance(self) -> AcceptanceEstimate:
        return self.drafters.acceptance

    @property
    def local(self) -> bool:
        """Whether its rounds are drafted by the verifier's n-gram lookup, not by a proposer."""
        return self.drafters.uses_local


@dataclass
class GatewayCore:
    verifiers: list[VerifierBackend]
    proposers: list[ProposerBackend]
    tokenizer: object
    eos_token_ids: set[int]
    max_model_len: int
    num_speculative_tokens: int
    proposer_timeout_s: float = 5.0
    verifier_wait_s: float = 30.0
    """How long a request waits for a verifier when none is reachable (unless its deadline is sooner)."""
    adaptive: bool = True
    drafts_are_sampled: bool = False  # the proposers draw sampled drafts from a non-one-hot q
    hidden_states: HiddenStates = HiddenStates.NONE  # what the proposers read of the target's hidden states
    draft_ahead: bool = True
    """While a round is verified, the proposer drafts the next one for the likely outcome
    (gateway_svc.draft_ahead); drafters that read hidden states never do."""
    local_ngram: tuple[int, int] | None = None
    """(prompt_lookup_min, prompt_lookup_max): the verifiers draft by n-gram lookup themselves, and no
    round waits for a proposer (verifier_svc.local_drafts)."""
    measure_drafters: bool = False
    """With local_ngram and proposers that draft otherwise (a draft model): each request's rounds are
    drafted by the verifier or by its proposer, whichever the measurements say yields more tokens per
    second (gateway_svc.drafter_choice). Without it, local_ngram drafts every round."""
    pipeline_steps: bool = True
    """Rounds that need no proposer are pipelined: several steps in flight, run back to back by the
    verifier, so no round waits for the link to the gateway."""
    direct_drafts: bool = False
    """Rounds drafted by a proposer are drafted at the verifier's request, right before they run
    (VerifyStep.remote_draft): the round crosses the verifier's link to the proposer instead of the
    gateway's two, hidden states go straight from verifier to proposer, and such rounds are pipelined
    like those that need no proposer. The verifiers must reach the proposers at the gateway's addresses."""
    proposer_affinity: bool = False
    """The proposers remember past outputs (suffix): related requests go to the same pod where load
    allows (gateway_svc.proposer_affinity), instead of to the least loaded."""
    metrics: RequestMetrics = field(default_factory=lambda: RequestMetrics(no_meter()))
    _rng: random.Random = field(default_factory=random.Random)

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True) if self.tokenizer is not None else ""

    async def _start_on_a_verifier(
        self, seq: Sequence, deadline: float, trace_context: pb.TraceContext | None
    ) -> VerifierBackend:
        """Start the sequence, with its committed tokens so far, on the least loaded live verifier (by
        what it reports, so that gateways sharing it spread out too); one that is full or fails is
        passed over for the next, with backoff while none is left. deadline: the client's; waiting for
        a verifier ends there or after `verifier_wait_s`, whichever comes first."""
        wait_until = min(deadline, time.monotonic() + self.verifier_wait_s)
        delay = 0.05
        while True:
            full: list[ServiceError] = []
            for verifier in sorted(
                (v for v in self.verifiers if v.info is not None and not v.superseded),
                key=lambda v: (v.load, -v.kv_free_share),
            ):
                verifier.num_sequences += 1  # counted before the first await, so concurrent requests spread out
                try:
                    await verifier.start(
                        seq.seq_id, seq.tokens, seq.params, seq.seed, self.hidden_states, trace_context, deadline
                    )
                    return verifier
                except (ConnectionError, ServiceError) as exc:
                    verifier.num_sequences -= 1
                    if isinstance(exc, ServiceError) and exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        full.append(exc)
                    elif not _verifier_lost(exc):
                        raise
                    else:
                        verifier.mark_down()
                except BaseException:  # the request was cancelled, perhaps with the start already sent
                    verifier.num_sequences -= 1
                    asyncio.get_running_loop().create_task(self._release(seq.seq_id, verifier, None))
                    raise
            if full:  # every live verifier is full: that is the answer, not an outage
                raise full[0]
            left = wait_until - time.monotonic()
            if left <= 0:
                raise ServiceError(
                    grpc.StatusCode.UNAVAILABLE,
                    "no verifier is reachable; start one (splitspec serve-verifier) and retry",
                )
            await asyncio.sleep(min(delay, left))
            delay = min(2 * delay, 1.0)

    def _next_proposer(
        self, exclude: ProposerBackend | None = None, affinity: bytes | None = None
    ) -> ProposerBackend | None:
        """Among the proposers taking new sequences: the one the affinity key prefers, if given and
        within load bounds, else the one that serves the fewest of this gateway's sequences."""
        candidates = [p for p in self.proposers if p.takes_new and p is not exclude]
        if affinity is not None:
            return pick_pod(candidates, affinity)
        return min(candidates, key=lambda p: p.num_sequences, default=None)

    async def generate(
        self,
        prompt: str | None,
        prompt_ids: list[int],
        params: SamplingParams,
        num_speculative_tokens: int,
        deadline: float | None = None,
        span: trace.Span = trace.INVALID_SPAN,
        session_id: str = "",
    ) -> AsyncIterator[Delta]:
        """deadline: the request's, as time.monotonic(); waiting for a verifier ends there or after
        `verifier_wait_s`, whichever comes first, and the verifier and the proposer hear of it, so that
        they free the sequence there even if the gateway cannot tell them. span: the request's, whose context the verifier's
        and proposer's spans continue, and which hears of failovers. session_id: the client's, which
        keeps its requests on one proposer where proposer_affinity asks for it."""
        seq_id = uuid.uuid4().hex
        seed = request_seed(params, self._rng)
        seq = Sequence(seq_id, prompt, list(prompt_ids), params, seed)
        trace_context = pb.TraceContext(**carrier_of(span)) if span.is_recording() else None
        stop_checker = StopChecker(self.eos_token_ids, self.max_model_len, self.decode)
        detokenizer = IncrementalDetokenizer(self.decode, params.stop_strings, len(prompt_ids))
        deadline = math.inf if deadline is None else deadline
        affinity = affinity_key(session_id, prompt_ids) if self.proposer_affinity else None
        slot = _ProposerSlot(affinity=affinity, deadline=deadline)
        measured = self._measures_drafters(num_speculative_tokens, params)
        starts_local = self.local_ngram is not None and (measured or not self.measure_drafters)
        req = _Request(seq, num_speculative_tokens, slot, DrafterChoice(uses_local=starts_local), measured,
                       trace_context, span)  # fmt: skip
        if num_speculative_tokens > 0 and not req.local:
            slot.use(self._next_proposer(affinity=slot.affinity))
        verifier: VerifierBackend | None = await self._start_on_a_verifier(seq, deadline, trace_context)
        verifier_moves = 0
        ahead_task: asyncio.Task | None = None
        pre_drafted: Draft | None = None  # this round's draft, drafted ahead during the last round
        pipe = req.pipe
        pipelined, drafts_pipelined = self._pipeline_modes(req)
        last_result_at: float | None = None
        try:
            while not seq.finished:
                moving = verifier.info is None and any(
                    v.info is not None and not v.superseded for v in self.verifiers if v is not verifier
                )
                if moving and not pipe.steps:
                    # its health says draining (or it stopped answering): move at this round, not at the end
                    leaving, verifier = verifier, None  # counted off by _move, even if no other answers
                    verifier = await self._move(seq, leaving, slot, deadline, trace_context, span)
                    verifier_moves += 1
                    moving = False
                switching = req.measured and self._prefers_other_drafter(req, verifier)
                if switching and not pipe.steps:  # drained: nothing in flight was drafted by the one left
                    if pipe.ahead is not None:  # let it settle what the proposer holds; its draft is moot
                        await pipe.ahead
                    pipe.cancel()
                    pre_drafted = None
                    self._switch_drafter(req)
                    pipelined, drafts_pipelined = self._pipeline_modes(req)
                    switching, last_result_at = False, None  # a move's first round is not the drafter's pace
                made_ahead, asked, remote_drafter = False, 0, None
                if pipelined:
                    if not moving and not switching:
                        self._fill_pipeline(req, verifier)
                    step, _, asked, remote_drafter = pipe.steps.popleft()
                elif drafts_pipelined:
                    if not moving and not switching:
                        await self._fill_drafted_pipeline(req, verifier)
                    step, made_ahead, asked, _ = await self._oldest_drafted_step(req, verifier, moving or switching)
                else:
                    if slot.backend is not None:  # leave a draining proposer even in rounds that draft nothing
                        self._available_proposer(seq, slot, span)
                    k = asked = self._num_drafts(req, verifier, slot.backend)
                    _plan_step(verifier, req, k)
                    local = (k, *self.local_ngram) if k > 0 and req.local else None
                    remote = None
                    if k > 0 and local is None and self.direct_drafts and self._available_proposer(seq, slot, span):
                        remote, remote_drafter = self._remote_draft(req, k), slot.backend
                    draft = Draft()
                    if k > 0 and local is None and not self.direct_drafts:
                        if pre_drafted is not None:
                            draft = Draft(pre_drafted.token_ids[:k], pre_drafted.q[:k])
                        else:
                            draft = await self._draft(seq, slot, k, trace_context, span)
                    pre_drafted = None
                    if k > 0 and local is None and not self.direct_drafts and self._drafts_ahead(slot):
                        ahead_task = asyncio.create_task(
                            self._draft_ahead(seq, slot, draft.token_ids, k, trace_context)
                        )
                    step = verifier.step(seq_id, len(seq.tokens), draft, local, remote=remote)
                try:
                    result = await step
                    if result.committed_len != len(seq.tokens):
                        raise ServiceError(
                            grpc.StatusCode.NOT_FOUND,
                            f"the verifier built on {result.committed_len} tokens, not the {len(seq.tokens)} committed",
                        )
                except (ConnectionError, ServiceError) as exc:
                    if not _verifier_lost(exc):
                        raise
                    if ahead_task is not None:  # let it settle what the proposer holds; its draft is moot
                        await ahead_task
                        ahead_task = None
                    pipe.cancel()
                    verifier.mark_down()
                    leaving, verifier = verifier, None  # counted off by _move, even if no other answers
                    verifier = await self._move(seq, leaving, slot, deadline, trace_context, span)
                    verifier_moves += 1
                    last_result_at = None
                    continue  # the round again, on the new verifier
                ahead = None
                if ahead_task is not None:
                    ahead, ahead_task = await ahead_task, None
                seq.stats.record_round(result.num_drafted, result.num_accepted)
                if result.HasField("hidden_states") and not self.direct_drafts:
                    slot.receive(result.hidden_states, self.hidden_states)
                self._heard_of_remote_draft(remote_drafter, result, asked)
                req.drafters.record(asked, result.num_drafted, result.num_accepted)
                if req.measured:
                    now = time.perf_counter()
                    if last_result_at is not None:
                        req.drafters.timed(len(result.token_ids), now - last_result_at)
                    last_result_at = now
                drafter = "none" if not result.num_drafted else "verifier" if req.local else "proposer"
                self.metrics.verify_rounds.add(1, {"drafter": drafter})
                round_tokens = list(result.token_ids)
                new_tokens = round_tokens[: stop_checker.commit(seq, round_tokens)]
                if drafts_pipelined:
                    pipe.prediction.committed(round_tokens, len(pipe.steps))
                    if made_ahead:
                        self.metrics.draft_ahead.add(1, {"outcome": "hit" if result.num_drafted else "miss"})
                if ahead is not None and not seq.finished:
                    pre_drafted = ahead.next_draft(round_tokens)
                    self.metrics.draft_ahead.add(1, {"outcome": "miss" if pre_drafted is None else "hit"})
                if seq.finished:
                    yield Delta(
                        new_tokens,
                        detokenizer.final_delta(stop_checker.output_text(seq)),
                        seq.finish_reason,
                        seq.stop_reason,
                        seq.stats,
                        len(prompt_ids),
                        seq.num_output_tokens,
                        verifier_moves + slot.moves,
                    )
                else:
                    yield Delta(new_tokens, detokenizer.delta(seq.tokens))
        finally:
            if ahead_task is not None:
                ahead_task.cancel()
            pipe.cancel()
            final = (slot.sent, seq.tokens[slot.sent :]) if len(seq.tokens) > slot.sent else None
            proposer = slot.use(None)  # with direct drafts, the verifier releases the sequence there itself
            self._leave(seq_id, verifier, None if self.direct_drafts and verifier is not None else proposer, final)

    def _pipeline_modes(self, req: _Request) -> tuple[bool, bool]:
        """Whether the request's rounds need nothing from a proposer (the verifier drafts by n-gram
        itself, or nothing is drafted), so its steps can be pipelined: sent before the results of the
        ones before them, and run back to back on the verifier (VerifyStep.pipelined). If not, whether
        its rounds, drafted by a proposer, are pipelined with drafts made ahead (gateway_svc.ahead_pipeline):
        drafters that need no hidden states, and requests whose K may vary (a step whose assumption
        fails verifies no drafts)."""
        if self._pipelines(req.local, req.num_speculative_tokens):
            return True, False
        drafted = (
            self.pipeline_steps
            and self._may_draft_ahead
            and req.num_speculative_tokens > 0
            and not keeps_fixed_k(self.drafts_are_sampled, req.seq.params)
        )
        return False, drafted

    def _pipelines(self, local: bool, num_speculative_tokens: int) -> bool:
        return self.pipeline_steps and (local or num_speculative_tokens == 0 or self.direct_drafts)

    def _measures_drafters(self, num_speculative_tokens: int, params: SamplingParams) -> bool:
        """Whether the request may move between the verifier's n-gram drafts and its proposer's, as
        measured: not where K stays fixed, since the drafts then decide a seeded request's samples."""
        return (
            self.measure_drafters
            and self.local_ngram is not None
            and self.adaptive
            and num_speculative_tokens > 0
            and not keeps_fixed_k(self.drafts_are_sampled, params)
        )

    def _prefers_other_drafter(self, req: _Request, verifier: VerifierBackend) -> bool:
        if verifier.cost_model is None:
            return False
        return req.drafters.wants_other(lambda local: self._drafter_value(req, verifier, local))

    def _drafter_value(self, req: _Request, verifier: VerifierBackend, local: bool) -> float:
        """The expected tokens per second of the request's next rounds if the verifier's n-gram lookup
        (local) or its proposer drafted them; 0 with no proposer to draft."""
        seq, drafters = req.seq, req.drafters
        proposer = None
        if not local:
            proposer = req.slot.backend if req.slot.backend is not None and req.slot.backend.available else None
            proposer = proposer or self._next_proposer()
            if proposer is None:
                return 0.0
        limit = max_drafts(seq, req.num_speculative_tokens, self.max_model_len)
        rows, tokens = verifier.others_in_pass(seq.seq_id)
        rate = (drafters.local if local else drafters.remote).rate
        round_trip = self._round_trip(req, verifier, local, proposer, rate)
        if proposer is not None and proposer.draft_token.value is None:
            # not measured yet: price a draft token as a target pass, the most a draft model should cost
            round_trip = replace(round_trip, draft_token_s=verifier.cost_model.cost(1))
        value = best_tokens_per_second(rate, limit, rows + 1, verifier.cost_model, tokens, round_trip)
        if local:  # a round without a match drafts nothing
            unmatched = best_tokens_per_second(0.0, 0, rows + 1, verifier.cost_model, tokens, round_trip)
            value = drafters.matches.rate * value + (1 - drafters.matches.rate) * unmatched
        return value

    def _switch_drafter(self, req: _Request) -> None:
        """Move the request to the other drafter; to the proposer it had, or the least loaded available one."""
        req.drafters.switch()
        if not req.local:
            self._available_proposer(req.seq, req.slot, req.span)
        drafter = "verifier" if req.local else "proposer"
        self.metrics.drafter_switches.add(1, {"to": drafter})
        req.span.add_event("drafter switch", {"splitspec.to": drafter})

    def _room(self, seq: Sequence, verifier: VerifierBackend) -> int:
        """How many steps to keep in flight: as many as keep the verifier busy across the link, and no
        more than the request may still need (each step commits at least one token)."""
        wanted = _pipeline_depth(verifier)
        if seq.params.max_tokens is not None:
            wanted = min(wanted, seq.params.max_tokens - seq.num_output_tokens)
        return max(1, wanted)

    def _fill_pipeline(self, req: _Request, verifier: VerifierBackend) -> None:
        """Send pipelined steps, each drafted on the verifier (by its n-grams, or by asking the proposer:
        direct_drafts) or not at all, until the pipeline is full."""
        seq, slot = req.seq, req.slot
        room = self._room(seq, verifier)
        if self.direct_drafts and keeps_fixed_k(self.drafts_are_sampled, seq.params):
            room = 1  # each step's K must be the one in-process decoding drafts at that length: sent last
        while len(req.pipe.steps) < room:
            local = remote = None
            if req.local:
                k = self._num_drafts(req, verifier, None)
                local = (k, *self.local_ngram) if k > 0 else None
            elif (
                self.direct_drafts and req.num_speculative_tokens > 0 and self._available_proposer(seq, slot, req.span)
            ):
                k = self._num_drafts(req, verifier, slot.backend)
                remote = self._remote_draft(req, k)  # even for k = 0: the verifier keeps the hidden states
            else:
                k = 0
            _plan_step(verifier, req, k)
            step = verifier.step(seq.seq_id, len(seq.tokens), Draft(), local, pipelined=True, remote=remote)
            req.pipe.steps.append(_InFlight(asyncio.create_task(step), False, k, slot.backend if remote else None))

    def _remote_draft(self, req: _Request, k: int) -> pb.RemoteDraft:
        """A step's VerifyStep.remote_draft: k drafts from the request's proposer."""
        backend = req.slot.backend
        return pb.RemoteDraft(
            num_tokens=k,
            proposer=backend.address,
            server_name=backend.server_name or "",
            num_prompt_tokens=len(req.seq.prompt_token_ids),
            timeout_s=min(self.proposer_timeout_s, MAX_REMOTE_DRAFT_TIMEOUT_S),
        )

    @staticmethod
    def _heard_of_remote_draft(backend: ProposerBackend | None, result: pb.StepResult, asked: int) -> None:
        """A step with a remote draft from `backend` says how long it took, or that it did not answer
        (then the sequence moves to another proposer at its next step)."""
        if backend is None or not (result.draft_wait_s or result.proposer_failed):
            return
        if result.proposer_failed:
            backend.mark_down()
        elif asked > 0:
            backend.draft_token.add(max(0.0, result.draft_wait_s - (backend.link.value or 0.0)) / asked)

    async def _fill_drafted_pipeline(self, req: _Request, verifier: VerifierBackend) -> None:
        """With nothing in flight, send a step: with the draft made ahead if its guess came true, else
        with a fresh draft. Then have the proposer draft ahead for the steps in flight."""
        pipe, slot = req.pipe, req.slot
        if not pipe.steps:
            if pipe.ahead is not None:
                pipe.ready, pipe.ahead = await pipe.ahead, None
            if not self._send_ready(req, verifier):
                if slot.backend is not None:  # leave a draining proposer even in rounds that draft nothing
                    self._available_proposer(req.seq, slot, req.span)
                k = self._num_drafts(req, verifier, slot.backend)
                draft = await self._draft(req.seq, slot, k, req.trace_context, req.span) if k > 0 else Draft()
                self._send_drafted(req, verifier, [], draft, made_ahead=False)
        self._ask_ahead(req, verifier)

    async def _oldest_drafted_step(self, req: _Request, verifier: VerifierBackend, holding: bool) -> _InFlight:
        """Wait for the oldest step in flight; a draft ahead that arrives meanwhile goes to the verifier
        at once, as the next step (unless the sequence is about to move or change drafters: `holding`),
        and the proposer drafts ahead of that one."""
        pipe = req.pipe
        while True:
            oldest = pipe.steps[0]
            waiting = {oldest.task} if pipe.ahead is None else {oldest.task, pipe.ahead}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if pipe.ahead is not None and pipe.ahead.done():
                pipe.ready, pipe.ahead = pipe.ahead.result(), None
                if not holding and self._send_ready(req, verifier):
                    self._ask_ahead(req, verifier)
            if oldest.task.done():
                return pipe.steps.popleft()

    def _send_drafted(
        self, req: _Request, verifier: VerifierBackend, assumed: list[int], draft: Draft, made_ahead: bool
    ) -> None:
        seq = req.seq
        _plan_step(verifier, req, len(draft.token_ids))
        step = verifier.step(seq.seq_id, len(seq.tokens), draft, None, pipelined=True, assumed=assumed)
        req.pipe.steps.append(_InFlight(asyncio.create_task(step), made_ahead, len(draft.token_ids)))
        req.pipe.prediction.sent(assumed, draft)

    def _send_ready(self, req: _Request, verifier: VerifierBackend) -> bool:
        """Send the draft made ahead as the next step if there is room and it still fits what the steps
        in flight are expected to commit; drop it if it no longer can."""
        pipe, seq = req.pipe, req.seq
        reply = pipe.ready
        if reply is None or len(pipe.steps) >= self._room(seq, verifier):
            return False
        pipe.ready = None
        assumed = pipe.prediction.assumed_for(reply, seq.tokens[reply.base_len :], len(pipe.steps))
        if assumed is None:
            self.metrics.draft_ahead.add(1, {"outcome": "miss"})
            return False
        self._send_drafted(req, verifier, assumed, reply.after_guess, made_ahead=True)
        return True

    def _ask_ahead(self, req: _Request, verifier: VerifierBackend) -> None:
        """Have the proposer draft after what the steps in flight are expected to commit, if a step with
        that draft could be sent once the oldest returns."""
        pipe, slot = req.pipe, req.slot
        if pipe.ahead is not None or pipe.ready is not None or not pipe.steps or pipe.prediction.tail is None:
            return
        if len(pipe.steps) > self._room(req.seq, verifier) or not self._drafts_ahead(slot):
            return
        k = self._num_drafts(req, verifier, slot.backend)
        if k > 0:
            tail = list(pipe.prediction.tail)
            pipe.ahead = asyncio.create_task(self._draft_ahead(req.seq, slot, tail, k, req.trace_context))

    async def _move(
        self,
        seq: Sequence,
        leaving: VerifierBackend,
        slot: _ProposerSlot,
        deadline: float,
        trace_context: pb.TraceContext | None,
        span: trace.Span,
    ) -> VerifierBackend:
        """Release the sequence on one verifier and start it, from its committed tokens, on another.
        Hidden states not yet passed on are dropped: the new verifier sends them all again."""
        self._leave(seq.seq_id, leaving, None)
        self.metrics.verifier_failovers.add(1)
        span.add_event("verifier failover", {"splitspec.from": leaving.address, "splitspec.tokens": len(seq.tokens)})
        slot.hidden_state = None
        return await self._start_on_a_verifier(seq, deadline, trace_context)

    def _leave(
        self,
        seq_id: str,
        verifier: VerifierBackend | None,
        proposer: ProposerBackend | None,
        final: tuple[int, list[int]] | None = None,
    ) -> None:
        """Stop counting the sequence on its verifier and release it there and on its proposer.
        final: what the proposer is told of the sequence's last tokens (ProposerBackend.release)."""
        if verifier is not None:
            verifier.num_sequences -= 1
            verifier.forget(seq_id)
        asyncio.get_running_loop().create_task(self._release(seq_id, verifier, proposer, final))

    def _num_drafts(self, req: _Request, verifier: VerifierBackend, proposer: ProposerBackend | None) -> int:
        """At most the request's K, and with the verifier's measured pass costs and the measured round
        trips, only as many as pay for themselves."""
        seq = req.seq
        k = max_drafts(seq, req.num_speculative_tokens, self.max_model_len)
        if k == 0 or not self.adaptive or verifier.cost_model is None:
            return k
        if keeps_fixed_k(self.drafts_are_sampled, seq.params):
            return k
        # the verifier batches this step with the other sequences' steps: draft only what raises the
        # whole pass's tokens per second, given the rows and tokens the others last brought
        rows, tokens = verifier.others_in_pass(seq.seq_id)
        rate = req.acceptance.rate
        round_trip = self._round_trip(req, verifier, req.local, proposer, rate)
        return choose_num_drafts([rate], [k], rows + 1, verifier.cost_model, base_tokens=tokens, round_trip=round_trip)[
            0
        ]

    def _round_trip(
        self, req: _Request, verifier: VerifierBackend, local: bool, proposer: ProposerBackend | None, rate: float
    ) -> RoundTrip:
        """What a round drafted locally or by `proposer` (at acceptance `rate`) costs besides the pass."""
        pipelined = self._pipelines(local, req.num_speculative_tokens)
        round_trip = RoundTrip(link_s=0.0 if pipelined else verifier.link.value or 0.0)  # pipelined: never waited
        if not local and proposer is not None:  # drafts made there cost a trip to the proposer
            round_trip = replace(
                round_trip,
                draft_s=proposer.link.value or 0.0,
                draft_token_s=proposer.draft_token.value or 0.0,
                ahead_rate=rate if self._may_draft_ahead and not self.direct_drafts else 0.0,
            )
        return round_trip

    async def _draft(
        self, seq: Sequence, slot: _ProposerSlot, k: int, trace_context: pb.TraceContext | None, span: trace.Span
    ) -> Draft:
        """Drafts from the sequence's proposer, failing over to another; no drafts if none answers."""
        for _ in range(len(self.proposers)):
            if not self._available_proposer(seq, slot, span):
                return Draft()
            try:
                result = await slot.backend.draft(
                    seq, slot.sent, k, self.proposer_timeout_s, slot.hidden_state, trace_context, deadline=slot.deadline
                )
                if result.needs_full_context:
                    slot.sent = 0
                    result = await slot.backend.draft(
                        seq, 0, k, self.proposer_timeout_s, slot.hidden_state, trace_context, deadline=slot.deadline
                    )
                slot.sent = len(seq.tokens)
                if self.hidden_states == HiddenStates.ALL:
                    slot.hidden_state = None  # delivered; the next draft carries only newer rows
                return wire.draft_from_proto(result.drafts[:k])
            except (ConnectionError, asyncio.TimeoutError, ServiceError):
                slot.backend.mark_down()
        return Draft()

    @property
    def _may_draft_ahead(self) -> bool:
        """Drafting ahead is on, and the drafters need no hidden states, which assumed tokens lack."""
        return self.draft_ahead and self.hidden_states == HiddenStates.NONE

    def _available_proposer(self, seq: Sequence, slot: _ProposerSlot, span: trace.Span) -> bool:
        """Whether the sequence has a proposer that takes drafts now, moving it off one that does not
        (draining, or down) to the least loaded other; a draining proposer exits once every sequence
        has left it."""
        if slot.backend is not None and slot.backend.available:
            return True
        replacement = self._next_proposer(exclude=slot.backend, affinity=slot.affinity)
        if replacement is None:
            return False
        left = slot.use(replacement)
        if left is not None:
            self._leave(seq.seq_id, None, left)
            self.metrics.proposer_failovers.add(1)
            slot.moves += 1
            span.add_event("proposer failover", {"splitspec.from": left.address})
        return True

    def _drafts_ahead(self, slot: _ProposerSlot) -> bool:
        return self._may_draft_ahead and slot.backend is not None and slot.backend.available

    async def _draft_ahead(
        self, seq: Sequence, slot: _ProposerSlot, assumed: list[int], k: int, trace_context: pb.TraceContext | None
    ) -> AheadDraft | None:
        """The proposer's draft after `assumed` (what the steps in flight are expected to commit): a guess
        at the verifier's next token, then up to k more. None when it has none: the next round drafts as
        usual."""
        backend, committed = slot.backend, len(seq.tokens)
        try:
            result = await backend.draft(
                seq, slot.sent, k + 1, self.proposer_timeout_s, None, trace_context, assumed, slot.deadline
            )
        except (ConnectionError, asyncio.TimeoutError, ServiceError):
            backend.mark_down()  # the next round's draft fails over
            return None
        if result.needs_full_context:
            slot.sent = 0
            return None
        slot.sent = committed
        return AheadDraft(list(assumed), wire.draft_from_proto(result.drafts[: k + 1]), committed)

    async def _release(
        self,
        seq_id: str,
        verifier: VerifierBackend | None,
        proposer: ProposerBackend | None,
        final: tuple[int, list[int]] | None = None,
    ) -> None:
        for backend in (verifier, proposer):
            if backend is None:
                continue
            try:
                await (backend.release(seq_id, final) if backend is proposer else backend.release(seq_id))
            except (ConnectionError, asyncio.TimeoutError, ServiceError, grpc.aio.UsageError):
                pass  # a backend that is gone (or closed by discovery) has dropped the sequence with its stream


def _plan_step(verifier: VerifierBackend, req: _Request, k: int) -> None:
    """Tell the verifier's plan what the step brings to its pass: k drafts and the token after them."""
    verifier.plan_step(req.seq.seq_id, k + 1, sum(req.acceptance.rate**i for i in range(k + 1)))


def _pipeline_depth(verifier: VerifierBackend) -> int:
    """Steps to keep in flight: the one verified now, and enough behind it that the next is at the
    verifier before the pass ends, however long the link (up to MAX_PIPELINE_DEPTH)."""
    link, cost = verifier.link.value, verifier.cost_model
    if link is None or cost is None:
        return 2
    return min(MAX_PIPELINE_DEPTH, 2 + int(link // max(cost.cost(1), 1e-6)))


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


def _verifier_lost(exc: BaseException) -> bool:
    """Whether a verifier's failure means "try another": its stream broke, it is unavailable, or it no
    longer knows the sequence (it restarted)."""
    if isinstance(exc, ConnectionError):
        return True
    return isinstance(exc, ServiceError) and exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND)
