"""The per-request loop: start the sequence on a verifier, then round after round send a step, wait
for its result, commit its tokens and stream them, until a stop.

How the steps are sent is the request's round mode (gateway_svc.round_plan decides it from what the
proposers report of their drafter, the gateway's settings and the request; gateway_svc.round_modes
carries it out). Where the sequence runs, and how it moves when a verifier or proposer drains or fails,
is gateway_svc.placement. Losing a proposer loses no output: the sequence moves to another (which gets
the whole context) or, with none left, is verified with no drafts — the same tokens, more slowly.
Losing a verifier loses none either: the gateway holds every committed token, so it starts the sequence
again on another verifier from that history and redoes the round. Seeded randomness is keyed by
position, so the tokens are those an uninterrupted run gives. docs/round-path.md walks one request
through.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator

import grpc
from opentelemetry import trace

from gateway_svc.backends import ProposerBackend, VerifierBackend
from gateway_svc.detokenizer import IncrementalDetokenizer
from gateway_svc.draft_sizing import drafter_value, num_drafts
from gateway_svc.drafter_choice import DrafterChoice
from gateway_svc.drafter_pool import DrafterPool
from gateway_svc.placement import Placement, verifier_lost
from gateway_svc.proposer_affinity import affinity_key
from gateway_svc.proposer_drafts import ProposerDrafts
from gateway_svc.request_state import Delta, ProposerSlot, Request, Sent
from gateway_svc.round_modes import Rounds, rounds_for
from gateway_svc.round_plan import RoundSettings, default_num_speculative_tokens, plan_request
from splitspec.errors import ServiceError
from splitspec.metrics import RequestMetrics, no_meter
from splitspec.rpc.proposer_client import ProposerFeed
from splitspec.sampling_params import SamplingParams
from splitspec.sequence import Sequence, request_seed
from splitspec.stop_checker import StopChecker
from splitspec.token_ban import TokenBan
from splitspec.token_penalties import TokenPenalties
from splitspec.tokenizer import decode_output
from splitspec.tracing import carrier_of
from splitspec_protos import splitspec_v1_pb2 as pb

__all__ = ["Delta", "GatewayCore"]


@dataclass
class GatewayCore:
    verifiers: list[VerifierBackend]
    proposers: list[ProposerBackend]
    tokenizer: object
    eos_token_ids: set[int]
    max_model_len: int
    proposer_timeout_s: float = 5.0
    verifier_wait_s: float = 30.0
    prefix_routing: bool = True
    """Sequences start on the verifier most likely to cache their prompt's beginning (gateway_svc.prefix_routing)."""
    """How long a request waits for a verifier when none is reachable (unless its deadline is sooner)."""
    rounds: RoundSettings = field(default_factory=RoundSettings)
    drafters: DrafterPool = field(default_factory=DrafterPool)
    """The drafter its proposers report, which plans each request's rounds (gateway_svc.round_plan)."""
    metrics: RequestMetrics = field(default_factory=lambda: RequestMetrics(no_meter()))
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.placement = Placement(
            self.verifiers, self.proposers, self.metrics, self.verifier_wait_s, self.prefix_routing
        )
        self.drafts = ProposerDrafts(self.placement, self.proposer_timeout_s)

    @property
    def num_speculative_tokens(self) -> int:
        """The K of a request that names none."""
        return default_num_speculative_tokens(self.drafters.planned[0], self.rounds)

    @property
    def method(self) -> str:
        """How its drafts are made: as the verifiers' speculator or the proposers report it; "ngram"
        while the verifiers' n-grams draft without them; "" while no proposer has reported."""
        traits = self.drafters.planned[0]
        if traits is not None:
            return traits.method
        return "ngram" if self.rounds.ngram_without_proposers and self.rounds.local_ngram else ""

    def decode(self, token_ids: list[int], params: SamplingParams) -> str:
        return decode_output(self.tokenizer, token_ids, params) if self.tokenizer is not None else ""

    def num_drafts(self, req: Request, verifier: VerifierBackend, proposer: ProposerBackend | None) -> int:
        return num_drafts(req, verifier, proposer, self.max_model_len)

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
        they free the sequence there even if the gateway cannot tell them. span: the request's, whose
        context the verifier's and proposer's spans continue, and which hears of failovers. session_id:
        the client's, which keeps its requests on one proposer where the proposers remember outputs."""
        req = self._new_request(prompt, prompt_ids, params, num_speculative_tokens, deadline, span, session_id)
        seq, plan = req.seq, req.plan
        stop_checker = StopChecker(self.eos_token_ids, self.max_model_len, self.decode)
        detokenizer = IncrementalDetokenizer(lambda ids: self.decode(ids, params), params.stop_strings, len(prompt_ids))
        if plan.num_speculative_tokens > 0 and not req.local:
            req.slot.use(self.placement.next_proposer(affinity=req.slot.affinity))
        verifier: VerifierBackend | None = await self.placement.start_on_a_verifier(
            seq, req.deadline, req.trace_context, plan.hidden_states, plan.hidden_layers
        )
        verifier_moves = 0
        rounds = rounds_for(self, req)
        last_result_at: float | None = None  # when the last result came, for a measured request's pace
        prompt_scored = False  # the prompt's logprobs have gone out
        try:
            while not seq.finished:
                moving = self.placement.draining(verifier)
                resending = req.slot.needs_states
                if (moving or resending) and not rounds.in_flight:  # move at this round, not at the end
                    leaving, verifier = verifier, None  # counted off by move, even if no other answers
                    verifier = await self.placement.move(req, leaving, failover=moving)
                    verifier_moves += moving
                    moving = resending = False
                switching = req.measured and self._prefers_other_drafter(req, verifier)
                if switching and not rounds.in_flight:  # drained: nothing in flight was drafted by the one left
                    rounds = await self._switch_drafter(req, rounds)
                    switching, last_result_at = False, None  # a move's first round is not the drafter's pace
                sent = await rounds.next_step(verifier, holding=moving or switching or resending)
                try:
                    result = await sent.step
                    if result.committed_len != len(seq.tokens):
                        raise ServiceError(
                            grpc.StatusCode.NOT_FOUND,
                            f"the verifier built on {result.committed_len} tokens, not the {len(seq.tokens)} committed",
                        )
                except (ConnectionError, ServiceError) as exc:
                    if not verifier_lost(exc):
                        raise
                    await rounds.settle()
                    rounds.cancel()
                    verifier.mark_down()
                    leaving, verifier = verifier, None  # counted off by move, even if no other answers
                    verifier = await self.placement.move(req, leaving)
                    verifier_moves += 1
                    last_result_at = None
                    continue  # the round again, on the new verifier
                await rounds.heard(sent)
                last_result_at = self._heard(req, sent, result, last_result_at)
                round_tokens = list(result.token_ids)
                new_tokens = round_tokens[: stop_checker.commit(seq, round_tokens)]
                logprobs = list(result.logprobs)[: len(new_tokens)] if params.logprobs is not None else None
                prompt_logprobs = None  # the first verifier's to score the prompt; a later one's go unused
                if result.prompt_logprobs and not prompt_scored:
                    prompt_logprobs, prompt_scored = list(result.prompt_logprobs), True
                rounds.committed(sent, result, round_tokens, seq.finished)
                if seq.finished:
                    yield Delta(
                        new_tokens,
                        detokenizer.final_delta(stop_checker.output_text(seq)),
                        seq.finish_reason,
                        seq.stop_reason,
                        seq.stats,
                        len(prompt_ids),
                        seq.num_output_tokens,
                        verifier_moves + req.slot.moves,
                        logprobs,
                        prompt_logprobs,
                    )
                else:
                    yield Delta(
                        new_tokens,
                        detokenizer.delta(seq.tokens),
                        prompt_tokens=len(prompt_ids),
                        completion_tokens=seq.num_output_tokens,
                        logprobs=logprobs,
                        prompt_logprobs=prompt_logprobs,
                    )
        finally:
            rounds.cancel()
            slot = req.slot
            final = (slot.feed.sent, seq.tokens)
            proposer = slot.use(None)  # with direct drafts, the verifier releases the sequence there itself
            keep = plan.direct_drafts and verifier is not None
            self.placement.leave(seq.seq_id, verifier, None if keep else proposer, final)

    def _new_request(
        self,
        prompt: str | None,
        prompt_ids: list[int],
        params: SamplingParams,
        num_speculative_tokens: int,
        deadline: float | None,
        span: trace.Span,
        session_id: str,
    ) -> Request:
        seq = Sequence(uuid.uuid4().hex, prompt, list(prompt_ids), params, request_seed(params, self._rng))
        seq.token_ban = TokenBan.for_request(params, len(prompt_ids), self.eos_token_ids)
        seq.penalties = TokenPenalties.for_request(params, len(prompt_ids))
        traits, on_verifiers = self.drafters.planned
        plan = plan_request(traits, self.rounds, num_speculative_tokens, params, on_verifiers)
        deadline = math.inf if deadline is None else deadline
        affinity = affinity_key(session_id, prompt_ids) if plan.affinity else None
        slot = ProposerSlot(ProposerFeed(plan.hidden_states), affinity=affinity, deadline=deadline)
        trace_context = pb.TraceContext(**carrier_of(span)) if span.is_recording() else None
        drafters = DrafterChoice(uses_local=plan.starts_local)
        return Request(seq, plan, slot, drafters, trace_context, span, deadline)

    def _heard(self, req: Request, sent: Sent, result: pb.StepResult, last_result_at: float | None) -> float | None:
        """Record a step's result: its round's stats, the hidden states for the proposer, how long a
        remote draft took, the drafter's acceptance and pace. Returns when this result came."""
        req.seq.stats.record_round(result.num_drafted, result.num_accepted)
        if result.HasField("hidden_states") and not req.plan.direct_drafts:
            req.slot.feed.receive(result.hidden_states)
        self.drafts.heard_of_remote_draft(sent.remote, result, sent.asked)
        req.drafters.record(sent.asked, result.num_drafted, result.num_accepted, list(result.tree_path) or None)
        if req.measured:
            now = time.perf_counter()
            if last_result_at is not None:
                req.drafters.timed(len(result.token_ids), now - last_result_at)
            last_result_at = now
        drafter = "none" if not result.num_drafted else "verifier" if req.local else "proposer"
        self.metrics.verify_rounds.add(1, {"drafter": drafter})
        return last_result_at

    def _prefers_other_drafter(self, req: Request, verifier: VerifierBackend) -> bool:
        if verifier.cost_model is None:
            return False

        def value(local: bool) -> float:
            proposer = None
            if not local:
                backend = req.slot.backend
                proposer = backend if backend is not None and backend.available else self.placement.next_proposer()
            return drafter_value(req, verifier, local, proposer, self.max_model_len)

        return req.drafters.wants_other(value)

    async def _switch_drafter(self, req: Request, rounds: Rounds) -> Rounds:
        """Move the request to the other drafter (to the proposer it had, or the least loaded available
        one), in that drafter's round mode."""
        await rounds.settle()
        rounds.cancel()
        req.drafters.switch()
        if not req.local:
            self.placement.available_proposer(req)
        drafter = "verifier" if req.local else "proposer"
        self.metrics.drafter_switches.add(1, {"to": drafter})
        req.span.add_event("drafter switch", {"splitspec.to": drafter})
        return rounds_for(self, req)
