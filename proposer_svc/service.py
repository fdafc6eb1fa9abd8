"""The proposer's core, without gRPC: per-sequence context, updated incrementally, drafted in batches."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc
import torch
from opentelemetry import trace
from opentelemetry.metrics import Meter, Observation

from proposer_svc.proposer import Proposer
from splitspec.config import MAX_TREE_WIDTH
from splitspec.draft_limits import MAX_DRAFTS_PER_STEP, MAX_EXCLUDED_FIRST_TOKENS
from splitspec.drafts import Draft, DraftRequest
from splitspec.errors import ServiceError
from splitspec.metrics import no_meter
from splitspec.rpc.micro_batcher import MicroBatcher
from splitspec.rpc.time_limits import Expiries, check_time_limit
from splitspec.tracing import Tracing, context_of


def _continues(context: list[int], start: int, token_ids: list[int]) -> bool:
    """Whether token_ids, placed at `start`, continue the context held: what it holds from there on,
    if anything (a caller that did not hear of an earlier call may send it again), is the same."""
    held_from_start = context[start:]
    return start <= len(context) and token_ids[: len(held_from_start)] == held_from_start


@dataclass
class DraftOutcome:
    draft: Draft
    needs_full_context: bool = False


class ProposerService:
    def __init__(
        self,
        proposer: Proposer,
        *,
        num_speculative_tokens: int,
        batch_window_s: float = 0.001,
        meter: Meter | None = None,
        tracing: Tracing | None = None,
        max_drafts_per_step: int = MAX_DRAFTS_PER_STEP,
    ) -> None:
        """max_drafts_per_step: the most drafts one call may ask for."""
        self.proposer = proposer
        self.max_drafts_per_step = max_drafts_per_step
        self.tracing = tracing or Tracing()
        self.spans: dict[str, tuple[trace.Span, trace.SpanContext]] = {}  # seq_id -> its span, the request's
        self.traits = proposer.traits(num_speculative_tokens, max_drafts_per_step)
        """What its drafter is, as GetInfo reports it."""
        self.contexts: dict[str, list[int]] = {}
        self.expiries = Expiries(self._expire)
        self._releases: set[asyncio.Task] = set()
        self.batcher: MicroBatcher[DraftRequest, Draft] = MicroBatcher(
            self._propose, batch_window_s, expected=lambda: len(self.contexts)
        )
        meter = meter or no_meter()
        meter.create_observable_gauge(
            "splitspec_proposer_sequences", [lambda _: [Observation(len(self.contexts))]], description="Sequences held"
        )
        self._draft_seconds = meter.create_histogram("splitspec_draft", unit="s", description="Draft batch time")
        self._batch_sequences = meter.create_histogram(
            "splitspec_draft_batch_sequences", unit="1", description="Sequences drafted in one batch"
        )

    def _propose(self, requests: list[DraftRequest]) -> list[Draft]:
        started = time.perf_counter()
        span = trace.INVALID_SPAN
        if self.tracing.enabled:  # one span per batch, linked to the requests it drafts for
            links = [trace.Link(entry[1]) for r in requests if (entry := self.spans.get(r.seq_id))]
            span = self.tracing.tracer.start_span(
                "draft batch", links=links, attributes={"splitspec.rows": len(requests)}
            )
        try:
            drafts = self.proposer.propose(requests)
        finally:
            span.end()
        self._draft_seconds.record(time.perf_counter() - started)
        self._batch_sequences.record(len(requests))
        return drafts

    def start(self) -> None:
        self.batcher.start()

    async def close(self) -> None:
        await self.batcher.close()

    async def draft(
        self,
        seq_id: str,
        *,
        committed_len: int,
        start: int,
        token_ids: list[int],
        num_tokens: int,
        temperature: float,
        top_k: int,
        seed: int,
        hidden_state: torch.Tensor | None = None,
        assumed_token_ids: list[int] | None = None,
        excluded_first_token_ids: list[int] | None = None,
        num_prompt_tokens: int = 0,
        trace_context: tuple[str, str] = ("", ""),
        time_limit_s: float = 0.0,
        tree_width: int = 1,
    ) -> DraftOutcome:
        """Append committed tokens [start, committed_len) and draft; ask for everything if out of step.
        Tokens from `start` that it holds already must be the same ones; it appends the rest.
        assumed_token_ids: a draft ahead, drafted after these tokens, which the proposer does not hold.
        excluded_first_token_ids: a draft ahead for an outcome that rejects these tokens after the
        assumed ones: the first token drafted is none of them.
        num_prompt_tokens: how many of the committed tokens are the prompt (0: not known).
        trace_context: the client request's traceparent and tracestate, continued by a span per sequence.
        time_limit_s: the client's time left (0: none); the sequence is forgotten once it has passed.
        tree_width: the most children per drafted token; more than 1 lets a drafter that branches draft
        a tree (drafts ahead stay chains)."""
        limit = check_time_limit("draft.time_limit_s", time_limit_s)
        if not 1 <= tree_width <= MAX_TREE_WIDTH:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT, f"draft.tree_width: at most {MAX_TREE_WIDTH}, got {tree_width}"
            )
        if num_tokens > self.max_drafts_per_step:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"draft.num_tokens: at most {self.max_drafts_per_step} drafts a call on this proposer "
                f"(--max-drafts-per-step), got {num_tokens}",
            )
        assumed = assumed_token_ids or []
        excluded = tuple(excluded_first_token_ids or ())
        if len(excluded) > MAX_EXCLUDED_FIRST_TOKENS:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"draft.excluded_first_token_ids: at most {MAX_EXCLUDED_FIRST_TOKENS}, got {len(excluded)}",
            )
        if assumed and self.proposer.needs_hidden_states:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"assumed_token_ids: {self.proposer.method} reads the target's hidden states, which assumed tokens do not "
                "have yet; it cannot draft ahead",
            )
        if self.tracing.enabled and seq_id not in self.spans and (parent := context_of(*trace_context)) is not None:
            span = self.tracing.tracer.start_span("proposer sequence", context=parent)
            self.spans[seq_id] = (span, trace.get_current_span(parent).get_span_context())
        context = self.contexts.get(seq_id, [])
        if start + len(token_ids) != committed_len or not _continues(context, start, token_ids):
            if start != 0:
                self.contexts.pop(seq_id, None)
                return DraftOutcome(Draft(), needs_full_context=True)
            context = []
        context = context[:start] + token_ids
        self.contexts[seq_id] = context
        if limit is not None:
            self.expiries.arm(seq_id, limit)
        if num_tokens <= 0:
            return DraftOutcome(Draft())
        request = DraftRequest(
            seq_id,
            context + assumed,
            num_tokens,
            temperature,
            top_k,
            seed,
            hidden_state,
            num_prompt_tokens=min(num_prompt_tokens, committed_len),
            num_assumed=len(assumed),
            excluded_first=excluded,
            tree_width=1 if assumed else tree_width,
        )
        draft = await self.batcher.submit(request)
        if draft.token_ids and draft.token_ids[0] in excluded:  # a drafter with no other guess drafts nothing
            draft = Draft()
        return DraftOutcome(draft)

    def _expire(self, seq_id: str) -> None:
        """The client's deadline has passed and the sequence is still held: forget it."""
        task = asyncio.get_running_loop().create_task(self.release(seq_id))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def release(self, seq_id: str, start: int = 0, token_ids: list[int] | None = None) -> None:
        """token_ids: the sequence's last committed tokens, from `start`; kept by the drafter when they
        continue what it holds (Proposer.finish)."""
        self.expiries.cancel(seq_id)
        span, _ = self.spans.pop(seq_id, (trace.INVALID_SPAN, None))
        span.end()
        context = self.contexts.pop(seq_id, None)
        if context is None:
            return
        if token_ids and _continues(context, start, token_ids):
            await self.batcher.run_exclusive(self.proposer.finish, seq_id, context[:start] + token_ids)
        else:
            await self.batcher.run_exclusive(self.proposer.release, seq_id)
