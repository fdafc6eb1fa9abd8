"""The verifier's core, without gRPC: sequences from many streams, verified in shared batches.

Steps that arrive within a short window go through the target in one forward pass. When the KV cache
is short, idle sequences lose their cached blocks first (they re-prefill from the token history the
verifier keeps); a step that still does not fit waits for the next batch.
"""

from __future__ import annotations

import asyncio
import sys
import time
import traceback
from dataclasses import dataclass, field, replace

import grpc
import torch
from opentelemetry import trace
from opentelemetry.metrics import Meter, Observation

from splitspec.adaptive_k import PassCostModel
from splitspec.draft_limits import DEFAULT_AHEAD_REJECTIONS, MAX_DRAFTS_PER_STEP
from splitspec.drafts import Draft, HiddenStates
from splitspec.errors import RunnerLost, ServiceError, SplitspecError
from splitspec.metrics import kv_cache_usage, no_meter, observe_prefix_cache
from splitspec.models.runner import ModelRunner
from splitspec.output_grammar import GrammarCompiler, GrammarState
from splitspec.rpc.channels import Channels
from splitspec.rpc.grpc_server import channel_options
from splitspec.rpc.micro_batcher import RETRY, MicroBatcher
from splitspec.rpc.targets import Target
from splitspec.rpc.time_limits import Expiries, check_time_limit
from splitspec.sampling_params import SamplingParams
from splitspec.sequence import check_prompt
from splitspec.structured_outputs import StructuredOutputsParams
from splitspec.token_ban import TokenBan
from splitspec.token_logprobs import Logprob
from splitspec.token_penalties import TokenPenalties
from splitspec.tracing import Tracing, context_of
from verifier_svc.draft_cuts import DraftCuts, PlannedStep, may_cut
from verifier_svc.draft_validation import check_draft, check_seq_id
from verifier_svc.local_drafts import LocalDrafter, LocalDraftSpec
from verifier_svc.local_speculator import LocalSpeculator
from verifier_svc.proposer_allowlist import ProposerAllowList
from verifier_svc.remote_drafts import ProposerLinks, RemoteDraftSpec
from verifier_svc.verifier import Verifier


@dataclass
class RemoteSequence:
    seq_id: str
    tokens: list[int]
    params: SamplingParams
    seed: int
    token_ban: TokenBan | None = None  # min_tokens: what the target may not emit yet
    penalties: TokenPenalties | None = None  # presence, frequency and repetition penalties
    grammar: GrammarState | None = None  # structured output: its matcher, in step with the committed tokens
    prompt_len: int = 0  # where the output starts in tokens
    prompt_logprobs: list[dict[int, Logprob]] | None = None  # once computed, when the sequence asks for them
    hidden_states: HiddenStates = HiddenStates.NONE  # what results carry for the sequence's drafter
    hidden_layers: tuple[int, ...] = ()  # the target layers whose inputs make those states (EAGLE-3)
    speculates: bool = False  # it drafts with the verifier's speculator: its passes keep the states the head reads
    span: trace.Span = trace.INVALID_SPAN  # its time here, in the client request's trace
    request_span: trace.SpanContext | None = None  # the client request's span at the gateway
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)  # its steps run one at a time, in arrival order


@dataclass
class _StepCall:
    seq: RemoteSequence
    committed_len: int
    draft: Draft
    speculate: int = 0  # drafts to ask the verifier's speculator for, right before the pass
    every_draft: bool = False  # verified whole: the sender's K is fixed (VerifyStep.every_draft)
    tree_width: int = 1  # the most branches per token the speculator may draft (LocalDraft.tree_width)


@dataclass
class StepOutcome:
    committed_len: int
    num_accepted: int
    token_ids: list[int]
    hidden_state: torch.Tensor | None = None  # when the sequence asked for it
    num_drafted: int = 0
    draft_wait_s: float = 0.0  # with a remote draft: the wait for the proposer
    proposer_failed: bool = False  # with a remote draft: the proposer did not answer
    logprobs: list[dict[int, Logprob]] | None = None  # when the sequence asked for them
    prompt_logprobs: list[dict[int, Logprob]] | None = None  # on its first pass, when it asked for them
    tree_path: list[int] | None = None  # a verified tree's accepted drafts, by index in the draft


MODEL_FAILED = "this verifier's model has failed; use another verifier"


class VerifierMetrics:
    """The verifier's series: what it holds, and what each batched pass costs and carries."""

    def __init__(self, meter: Meter, service: VerifierService) -> None:
        meter.create_observable_gauge(
            "splitspec_num_requests_running",
            [lambda _: [Observation(len(service.sequences))]],
            description="Sequences held",
        )
        meter.create_observable_gauge(
            "splitspec_kv_cache_usage_perc",
            [lambda _: kv_cache_usage(service.runner)],
            description="KV cache blocks in use, 0-1",
        )
        observe_prefix_cache(meter, service.runner)
        self.preemptions = meter.create_counter(
            "splitspec_num_preemptions", description="Idle sequences whose KV blocks were evicted to make room"
        )
        self.preemptions.add(0)
        self.pass_seconds = meter.create_histogram("splitspec_verify_pass", unit="s", description="Verify pass time")
        self.batch_tokens = meter.create_histogram(
            "splitspec_verify_batch_tokens", unit="1", description="Tokens through the target in one pass"
        )
        self.batch_sequences = meter.create_histogram(
            "splitspec_verify_batch_sequences", unit="1", description="Sequences in one pass"
        )
        self.draft_tokens = meter.create_counter(
            "splitspec_verifier_draft_tokens",
            description="Draft tokens by stage: offered (sent, or asked of the verifier's drafters), verified "
            "(left after the batch's cuts), accepted",
        )
        self.draft_cuts = meter.create_counter(
            "splitspec_verifier_draft_cuts",
            description="Steps whose drafts a pass verified only in part, or not at all",
        )
        self.tree_drafts = meter.create_counter(
            "splitspec_verifier_tree_drafts",
            description="Steps whose drafts were verified as a tree (several continuations in one pass)",
        )
        for stage in ("offered", "verified", "accepted"):
            self.draft_tokens.add(0, {"stage": stage})
        self.draft_cuts.add(0)
        self.tree_drafts.add(0)
        meter.create_observable_counter(
            "splitspec_draft_ahead",
            [lambda _: [Observation(n, {"outcome": outcome}) for outcome, n in service.remote.ahead_outcomes.items()]],
            description="Remote drafts made ahead while a pass ran: used by the next step (hit) or dropped (miss)",
        )


class VerifierService:
    def __init__(
        self,
        runner: ModelRunner,
        *,
        max_num_seqs: int = 64,
        batch_window_s: float = 0.002,
        meter: Meter | None = None,
        tracing: Tracing | None = None,
        max_drafts_per_step: int = MAX_DRAFTS_PER_STEP,
        proposer_channels: Channels | None = None,
        draft_ahead_rejections: int = DEFAULT_AHEAD_REJECTIONS,
        proposers: tuple[Target, ...] = (),
        speculator: LocalSpeculator | None = None,
        draft_cuts: bool = True,
        grammars: GrammarCompiler | None = None,
    ) -> None:
        """max_drafts_per_step: the most drafts a step may carry or ask the verifier to make.
        proposer_channels: how to reach proposers for remote drafts (default: plaintext).
        draft_ahead_rejections: remote drafts made ahead for the outcomes rejecting each of a step's first
        this many drafts, besides every draft accepted (verifier_svc.remote_drafts).
        proposers: the only proposers remote drafts may name (verifier_svc.proposer_allowlist); none: remote
        drafts are refused. speculator: drafts beside the target for steps that ask it
        (verifier_svc.local_speculator). draft_cuts: each pass verifies only the drafts that pay for the
        batch, given the measured pass costs (verifier_svc.draft_cuts). grammars: compiles sequences'
        structured outputs (none: they are refused)."""
        self.max_drafts_per_step = max_drafts_per_step
        self.grammars = grammars
        self.runner = runner
        self.failure: str | None = None  # why a pass failed: the verifier serves no more
        self.tracing = tracing or Tracing()
        self.verifier = Verifier(runner)
        self.max_num_seqs = max_num_seqs
        self.sequences: dict[str, RemoteSequence] = {}
        self.num_evictions = 0
        self.cost_model: PassCostModel | None = None  # measured pass costs, published for the gateway
        self.batcher: MicroBatcher[_StepCall, StepOutcome] = MicroBatcher(
            self._run_batch, batch_window_s, expected=lambda: len(self.sequences)
        )
        self.remote = ProposerLinks(proposer_channels or Channels(channel_options()), draft_ahead_rejections)
        self.proposers = ProposerAllowList(proposers)
        self.metrics = VerifierMetrics(meter or no_meter(), self)
        self.local_drafter = LocalDrafter()
        self.speculator = speculator
        self.cuts = DraftCuts() if draft_cuts else None
        self.expiries = Expiries(self._expire)
        self._releases: set[asyncio.Task] = set()

    def start(self) -> None:
        self.batcher.start()

    async def grammar_state(self, structured_outputs: StructuredOutputsParams, output: list[int]) -> GrammarState:
        """A matcher for a starting sequence, moved through its output so far (a sequence resent after a
        move). Compiled on a worker thread: a schema that compiles slowly holds up no other request."""
        if self.grammars is None:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "this verifier does not do structured outputs")
        try:
            return await asyncio.to_thread(self.grammars.state, structured_outputs, output)
        except SplitspecError as exc:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None

    def healthy(self) -> bool:
        """False for good once a pass has failed or the runner cannot run passes."""
        return self.failure is None and self.runner.healthy()

    async def close(self) -> None:
        await self.batcher.close()
        await self.remote.close()

    def add(
        self,
        seq_id: str,
        token_ids: list[int],
        params: SamplingParams,
        seed: int,
        hidden_states: HiddenStates = HiddenStates.NONE,
        trace_context: tuple[str, str] = ("", ""),
        time_limit_s: float = 0.0,
        hidden_layers: tuple[int, ...] = (),
        token_ban: TokenBan | None = None,
        penalties: TokenPenalties | None = None,
        grammar: GrammarState | None = None,
        prompt_len: int = 0,
    ) -> None:
        """trace_context: the client request's traceparent and tracestate, which its span here continues.
        time_limit_s: the client's time left (0: none); the sequence is released once it has passed.
        hidden_layers: the target layers whose inputs make the states results carry (EAGLE-3).
        token_ban: what the target may not emit yet (min_tokens). penalties: on the target's logits.
        grammar: the structured output's matcher, moved through the output so far (grammar_state).
        prompt_len: where the output starts in token_ids."""
        if not self.healthy():
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, MODEL_FAILED)
        check_seq_id(seq_id)
        if seq_id in self.sequences:
            raise ServiceError(grpc.StatusCode.ALREADY_EXISTS, f"sequence {seq_id} is already running on this verifier")
        try:
            check_prompt(token_ids, self.runner.vocab_size, self.runner.max_model_len)
            params.check_vocabulary(self.runner.vocab_size)
        except SplitspecError as exc:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        limit = check_time_limit("start.time_limit_s", time_limit_s)
        layers = getattr(self.runner, "layers", None)
        if hidden_layers and (layers is None or not all(0 <= i < len(layers) for i in hidden_layers)):
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"start.hidden_layers {list(hidden_layers)} are not layers of this verifier's target",
            )
        if len(self.sequences) >= self.max_num_seqs:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"verifier is full ({self.max_num_seqs} sequences); retry later"
            )
        seq = RemoteSequence(
            seq_id,
            list(token_ids),
            params,
            seed,
            token_ban,
            penalties,
            grammar,
            prompt_len,
            hidden_states=hidden_states,
            hidden_layers=tuple(sorted(set(hidden_layers))),
        )
        if self.tracing.enabled and (parent := context_of(*trace_context)) is not None:
            seq.request_span = trace.get_current_span(parent).get_span_context()
            seq.span = self.tracing.tracer.start_span(
                "verifier sequence", context=parent, attributes={"splitspec.start_tokens": len(token_ids)}
            )
        self.sequences[seq_id] = seq
        if limit is not None:
            self.expiries.arm(seq_id, limit)

    async def step(
        self,
        seq_id: str,
        committed_len: int,
        draft: Draft,
        local: LocalDraftSpec | None = None,
        pipelined: bool = False,
        assumed: list[int] | None = None,
        remote: RemoteDraftSpec | None = None,
        every_draft: bool = False,
    ) -> StepOutcome:
        """local: draft here instead (verifier_svc.local_drafts); `draft` must then be empty.
        pipelined: build on whatever the sequence's earlier steps commit, with `draft` verified only
        when they commit exactly `assumed` (VerifyStep.pipelined).
        remote: have the sequence's proposer draft, right before the step runs (verifier_svc.remote_drafts);
        `draft` must then be empty and `local` None. every_draft: verify all of its drafts, never a
        prefix (verifier_svc.draft_cuts)."""
        if self.failure is not None:  # a lost runner needs no check here: its pass raises RunnerLost
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, MODEL_FAILED)
        seq = self.sequences.get(seq_id)
        if seq is None:
            raise ServiceError(grpc.StatusCode.NOT_FOUND, f"sequence {seq_id} is not running on this verifier")
        if sum((bool(draft.token_ids), local is not None, remote is not None)) > 1:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT, "a step has at most one of drafts, local_draft and remote_draft"
            )
        if assumed and not pipelined:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "assumed_token_ids needs a pipelined step")
        self._check_num_drafts("drafts", len(draft.token_ids))
        if local is not None:
            local.check()
            self._check_num_drafts("local_draft.num_tokens", local.num_tokens)
            if local.speculator and seq.hidden_states != HiddenStates.NONE:
                raise ServiceError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "local_draft.speculator: this sequence's hidden states go to a proposer; it drafts there",
                )
        if remote is not None:
            remote.check()
            self._check_num_drafts("remote_draft.num_tokens", remote.num_tokens)
        check_draft(draft, self.runner.vocab_size)
        async with seq.turn:
            if self.sequences.get(seq_id) is not seq:  # released while the step waited for its turn
                raise ServiceError(grpc.StatusCode.NOT_FOUND, f"sequence {seq_id} was released")
            if remote is not None:  # under the turn: a check that resolves a name waits, and steps keep their order
                await self.proposers.check(remote.proposer)
            if pipelined:
                committed_len, draft, local = self._pipelined_on(seq, committed_len, draft, assumed or [], local)
            current = committed_len == len(seq.tokens)  # otherwise the step is refused as stale
            speculate, tree_width = 0, 1
            if local is not None and local.speculator:
                tree_width = local.tree_width
                speculate = local.num_tokens if self.speculator is not None else 0  # none here: no drafts
            elif local is not None and current:
                draft = self.local_drafter.draft(seq_id, seq.tokens, local)
            fetched = None
            if remote is not None and current:
                room = self.runner.max_model_len - len(seq.tokens)
                remote = replace(remote, num_tokens=min(remote.num_tokens, max(room, 0)))
                self.remote.follow(seq_id, remote, seq.tokens, seq.hidden_states)
                if remote.num_tokens > 0:
                    fetched = await self.remote.take_ahead(seq_id, seq.tokens, remote.num_tokens)
                    if fetched is None:
                        fetched = await self.remote.draft(seq_id, list(seq.tokens), seq.params, seq.seed, remote)
                    try:  # a proposer is trusted no more for being called by the verifier
                        check_draft(fetched.draft, self.runner.vocab_size)
                    except ServiceError:
                        fetched = replace(fetched, draft=Draft(), failed=True)
                    draft = fetched.draft
            if fetched is not None and not fetched.failed:  # asked now, made while the pass runs
                chain = draft.main_chain().token_ids
                self.remote.draft_ahead(seq_id, seq.tokens, chain, seq.params, seq.seed, remote)
            outcome = await self.batcher.submit(
                _StepCall(seq, committed_len, draft, speculate, every_draft, tree_width)
            )
            if remote is not None:
                self.remote.received(seq_id, outcome.hidden_state)
            if fetched is not None:
                outcome.draft_wait_s, outcome.proposer_failed = fetched.wait_s, fetched.failed
            return outcome

    def _check_num_drafts(self, field: str, num_drafts: int) -> None:
        if num_drafts > self.max_drafts_per_step:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{field}: at most {self.max_drafts_per_step} drafts a step on this verifier "
                f"(--max-drafts-per-step), got {num_drafts}",
            )

    def _pipelined_on(
        self, seq: RemoteSequence, sent_on: int, draft: Draft, assumed: list[int], local: LocalDraftSpec | None
    ) -> tuple[int, Draft, LocalDraftSpec | None]:
        """What a pipelined step verifies: on the sequence's committed length now, its drafts if the
        steps before committed exactly the tokens they assumed (else none), and no more drafts, sent or
        made here, than the model's context leaves room for."""
        if sent_on > len(seq.tokens):
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"stale step for {seq.seq_id}: sent on {sent_on} tokens, verifier has {len(seq.tokens)}",
            )
        room = self.runner.max_model_len - len(seq.tokens)
        if room <= 0:
            raise ServiceError(grpc.StatusCode.OUT_OF_RANGE, f"sequence {seq.seq_id} has reached the model's context")
        if seq.tokens[sent_on:] != assumed:
            draft = Draft()
        draft = draft.first(room)
        if local is not None and local.num_tokens > room:
            local = replace(local, num_tokens=room)
        return len(seq.tokens), draft, local

    def _expire(self, seq_id: str) -> None:
        """The client's deadline has passed and the sequence is still held: release it."""
        task = asyncio.get_running_loop().create_task(self.release(seq_id))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def release(self, seq_id: str) -> None:
        self.expiries.cancel(seq_id)
        seq = self.sequences.pop(seq_id, None)
        self.local_drafter.release(seq_id)
        if seq is not None and seq.speculates:
            await self.batcher.run_exclusive(self.speculator.release, seq_id)
        if seq is not None:
            self.remote.release(seq_id, seq.tokens)
            seq.span.set_attribute("splitspec.end_tokens", len(seq.tokens))
            seq.span.end()
            await self.batcher.run_exclusive(self._forget, seq_id)

    def _forget(self, seq_id: str) -> None:
        """On the pass thread, between passes: its blocks and its acceptance record."""
        self.verifier.free(seq_id)
        if self.cuts is not None:
            self.cuts.release(seq_id)

    @property
    def num_free_blocks(self) -> int:
        return getattr(self.runner, "num_free_blocks", 0)

    # -- worker thread -----------------------------------------------------------------------------

    def _run_batch(self, calls: list[_StepCall]) -> list[StepOutcome | BaseException | object]:
        outcomes: list[StepOutcome | BaseException | object] = [None] * len(calls)
        ready: list[int] = []
        for i, call in enumerate(calls):
            problem = self._check(call)
            if problem is not None:
                outcomes[i] = problem
            else:
                ready.append(i)
        self._start_speculating([calls[i] for i in ready])
        offered = self._cut([calls[i] for i in ready])
        self._speculate([calls[i] for i in ready])
        steps = [(calls[i].seq, calls[i].draft) for i in ready]
        self._evict_idle_until_fits(steps, {calls[i].seq.seq_id for i in ready})
        while steps and not self.verifier.fits(steps):
            if len(steps) == 1:
                outcomes[ready[0]] = ServiceError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, "the sequence no longer fits in the verifier's KV cache"
                )
                steps, ready = [], []
                break
            outcomes[ready.pop()] = RETRY
            steps.pop()
        # counted for the steps this pass verifies: one sent back to retry offers its drafts again then
        self.metrics.draft_tokens.add(sum(offered[: len(ready)]), {"stage": "offered"})
        if steps:
            tokens = sum(len(seq.tokens) - self.runner.cached_length(seq.seq_id) + len(d.token_ids) for seq, d in steps)
            started = time.perf_counter()
            span = self._pass_span(steps, tokens)
            try:
                results = self.verifier.verify(
                    steps,
                    [self._states_for(calls[i].seq) for i in ready],
                    [self._layers_for(calls[i].seq) for i in ready],
                )
            except RunnerLost as exc:  # every call of the batch fails with it: another verifier can go on
                span.end()
                raise ServiceError(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
            except Exception:
                # the KV cache may hold half a pass and the device may be broken: serve nothing more, so
                # that the gateways move every sequence to another verifier and the pod gets restarted
                span.end()
                self.failure = "a verify pass raised"
                print("splitspec verifier: a verify pass raised; health is NOT_SERVING", file=sys.stderr, flush=True)
                traceback.print_exc()
                raise ServiceError(
                    grpc.StatusCode.UNAVAILABLE, "this verifier's model failed a pass; use another verifier"
                ) from None
            seconds = time.perf_counter() - started
            span.set_attribute("splitspec.seconds", seconds)
            span.end()
            self.metrics.pass_seconds.record(seconds)
            if self.cost_model is not None:
                self.cost_model.observe(tokens, seconds)
            self.metrics.batch_tokens.record(tokens)
            self.metrics.batch_sequences.record(len(steps))
            for i, result in zip(ready, results):
                seq = calls[i].seq
                base = len(seq.tokens)
                seq.tokens.extend(result.token_ids)
                self.verifier.rollback(seq)
                hidden = result.hidden_state
                if seq.speculates:  # the head's, kept here
                    self.speculator.received(seq.seq_id, hidden)
                    hidden = None
                verified = len(calls[i].draft.token_ids)
                outcomes[i] = StepOutcome(base, result.num_accepted, result.token_ids, hidden, verified)
                outcomes[i].tree_path = result.path
                outcomes[i].logprobs = result.logprobs
                if result.prompt_logprobs is not None:
                    seq.prompt_logprobs = outcomes[i].prompt_logprobs = result.prompt_logprobs
                if self.cuts is not None:
                    self.cuts.record(seq.seq_id, verified, result.num_accepted, result.path)
                self.metrics.draft_tokens.add(verified, {"stage": "verified"})
                self.metrics.draft_tokens.add(result.num_accepted, {"stage": "accepted"})
                if result.path is not None:
                    self.metrics.tree_drafts.add(1)
        return outcomes

    def _start_speculating(self, calls: list[_StepCall]) -> None:
        """A sequence's first step asking the speculator re-prefills it: its earlier passes kept no
        states for the head."""
        for call in calls:
            if call.speculate and self.speculator is not None and not call.seq.speculates:
                call.seq.speculates = True
                self.verifier.free(call.seq.seq_id)

    def _cut(self, calls: list[_StepCall]) -> list[int]:
        """Shorten each step's drafts (or the drafts it asks the speculator for) to what pays for the
        whole pass (verifier_svc.draft_cuts). Returns the drafts each step offered before the cut."""
        planned = [
            PlannedStep(
                c.seq.seq_id,
                len(c.seq.tokens) - self.runner.cached_length(c.seq.seq_id),
                c.speculate or len(c.draft.token_ids),
                not c.every_draft and (c.seq.params.greedy if c.speculate else may_cut(c.seq.params, c.draft)),
                drafted_here=bool(c.speculate),
                tree=c.draft.is_tree or (bool(c.speculate) and c.tree_width > 1),
            )
            for c in calls
        ]
        if self.cuts is None:
            return [p.offered for p in planned]
        for call, step, k in zip(calls, planned, self.cuts.plan(planned, self.cost_model)):
            if k == step.offered:
                continue
            self.metrics.draft_cuts.add(1)
            if call.speculate:
                call.speculate = k
            else:
                call.draft = call.draft.first(k)
        return [p.offered for p in planned]

    def _speculate(self, calls: list[_StepCall]) -> None:
        """Draft the steps that ask the speculator, in one call of it."""
        asking = [c for c in calls if c.speculate and self.speculator is not None]
        if not asking:
            return
        room = self.runner.max_model_len
        wanted = [
            (
                c.seq.seq_id,
                c.seq.tokens,
                c.seq.params,
                c.seq.seed,
                max(0, min(c.speculate, room - len(c.seq.tokens))),
                c.tree_width,
            )
            for c in asking
        ]
        started = time.perf_counter()
        try:
            drafts = self.speculator.draft(wanted)
        except Exception:  # drafts are only proposals: a failing head costs speed, never a token
            print("splitspec verifier: the speculator failed to draft; verifying without drafts", file=sys.stderr)
            traceback.print_exc()
            return
        longest = max(n for *_, n, _ in wanted)
        if self.cuts is not None and longest:
            self.cuts.head_draft_s.add((time.perf_counter() - started) / longest)
        for call, draft in zip(asking, drafts):
            call.draft = draft

    def _states_for(self, seq: RemoteSequence) -> HiddenStates:
        return self.speculator.hidden_states if seq.speculates else seq.hidden_states

    def _layers_for(self, seq: RemoteSequence) -> tuple[int, ...]:
        return self.speculator.hidden_layers if seq.speculates else seq.hidden_layers

    def _pass_span(self, steps: list[tuple[RemoteSequence, Draft]], tokens: int) -> trace.Span:
        """A span for one batched pass, linked to the request spans of the sequences it serves."""
        if not self.tracing.enabled:
            return trace.INVALID_SPAN
        links = [trace.Link(seq.request_span) for seq, _ in steps if seq.request_span is not None]
        return self.tracing.tracer.start_span(
            "verify pass", links=links, attributes={"splitspec.rows": len(steps), "splitspec.tokens": tokens}
        )

    def _check(self, call: _StepCall) -> ServiceError | None:
        seq = call.seq
        if self.sequences.get(seq.seq_id) is not seq:
            return ServiceError(grpc.StatusCode.NOT_FOUND, f"sequence {seq.seq_id} was released")
        if call.committed_len != len(seq.tokens):
            return ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"stale step for {seq.seq_id}: built on {call.committed_len} tokens, verifier has {len(seq.tokens)}",
            )
        k = len(call.draft.token_ids)
        if len(seq.tokens) + k > self.runner.max_model_len:
            return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"{k} drafts would run past the model's context")
        return None

    def _evict_idle_until_fits(self, steps, busy: set[str]) -> None:
        """Drop the cached blocks of sequences that are not stepping now, largest first."""
        if self.verifier.fits(steps):
            return
        idle = [
            s for s in list(self.sequences.values()) if s.seq_id not in busy and self.runner.cached_length(s.seq_id)
        ]
        for seq in sorted(idle, key=lambda s: self.runner.cached_length(s.seq_id), reverse=True):
            self.verifier.free(seq.seq_id)
            self.num_evictions += 1
            self.metrics.preemptions.add(1)
            if self.verifier.fits(steps):
                return
