"""What the gateway keeps of one request while its rounds run: the sequence, its plan, its proposer
slot, and the steps it has sent and not yet heard back."""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, NamedTuple

from opentelemetry import trace

from gateway_svc.ahead_pipeline import Prediction
from gateway_svc.backends import ProposerBackend, VerifierBackend
from gateway_svc.draft_ahead import AheadDraft
from gateway_svc.drafter_choice import DrafterChoice
from gateway_svc.round_plan import RequestPlan, RoundMode
from splitspec.adaptive_k import PositionalAcceptance
from splitspec.outputs import SpeculationStats
from splitspec.rpc.proposer_client import ProposerFeed
from splitspec.sequence import Sequence
from splitspec_protos import splitspec_v1_pb2 as pb


@dataclass
class Delta:
    """What one round adds to the client's stream; the last one carries the request's outcome."""

    token_ids: list[int]
    text: str
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    stats: SpeculationStats | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    """So far, in every delta."""
    failovers: int = 0  # times the sequence moved to another verifier or proposer
    logprobs: list[pb.TokenLogprobs] | None = None  # with sampling.logprobs: one per token of token_ids
    prompt_logprobs: list[pb.TokenLogprobs] | None = None  # with sampling.prompt_logprobs, in the first delta


@dataclass
class ProposerSlot:
    """The sequence's proposer, and what that proposer holds of it and has yet to receive."""

    feed: ProposerFeed
    backend: ProposerBackend | None = None
    moves: int = 0  # times it left a proposer for another
    needs_states: bool = False
    """Its new proposer reads the state behind every token (EAGLE) and holds none: the verifier must send
    them all again, which a re-prefill does."""
    affinity: bytes | None = None  # for drafters that remember outputs, the pods it prefers (proposer_affinity)
    deadline: float = math.inf  # the client's, on time.monotonic(): passed on with every draft

    def use(self, backend: ProposerBackend | None) -> ProposerBackend | None:
        """Move to another proposer (which holds nothing of the sequence yet); the one left, if any.
        Hidden states not yet passed on go to the new one."""
        left, self.backend, self.feed.sent = self.backend, backend, 0
        if left is not None:
            left.num_sequences -= 1
        if backend is not None:
            backend.num_sequences += 1
        return left


class Sent(NamedTuple):
    """A step sent to the verifier and not yet answered."""

    step: Awaitable[pb.StepResult]
    made_ahead: bool  # its drafts were made ahead, assuming the outcome of the steps before it
    asked: int  # the drafts it asked for (those the verifier drafts itself, or those it carries)
    remote: ProposerBackend | None = None  # the proposer the verifier asks for its drafts (direct_drafts)


@dataclass
class Pipeline:
    """A request's pipelined steps (VerifyStep.pipelined) and, with a remote drafter, its drafts ahead."""

    steps: deque[Sent] = field(default_factory=deque)
    """Oldest first; each step a task."""
    prediction: Prediction = field(default_factory=Prediction)
    ahead: asyncio.Task | None = None  # the proposer making a draft ahead
    ready: AheadDraft | None = None  # a draft ahead made, waiting for room in the pipeline

    def cancel(self) -> None:
        """Stop waiting for the steps and the draft ahead: their answers are no longer wanted."""
        tasks = [step.step for step in self.steps] + ([self.ahead] if self.ahead is not None else [])
        for task in tasks:
            task.cancel()
            task.add_done_callback(retrieve)
        self.steps.clear()
        self.ahead, self.ready, self.prediction = None, None, Prediction()


@dataclass
class Request:
    """What the rounds of one request work from."""

    seq: Sequence
    plan: RequestPlan
    slot: ProposerSlot
    drafters: DrafterChoice
    trace_context: pb.TraceContext | None
    span: trace.Span
    deadline: float = math.inf
    """The client's, on time.monotonic()."""

    @property
    def num_speculative_tokens(self) -> int:
        return self.plan.num_speculative_tokens

    @property
    def measured(self) -> bool:
        """Whether its drafter may change between rounds, as measured (gateway_svc.drafter_choice)."""
        return self.plan.measured

    @property
    def mode(self) -> RoundMode:
        """Its round mode with the drafter it is on now."""
        return self.plan.mode(self.local)

    @property
    def acceptance(self) -> PositionalAcceptance:
        return self.drafters.acceptance

    def draft_gains(self, k: int) -> list[float]:
        """The tokens each of k drafts is expected to add (PositionalAcceptance.gains)."""
        return self.acceptance.gains(k, self.plan.tree_width > 1)

    @property
    def local(self) -> bool:
        """Whether its rounds are drafted by the verifier's n-gram lookup, not by a proposer."""
        return self.drafters.uses_local


def plan_step(verifier: VerifierBackend, req: Request, k: int) -> None:
    """Tell the verifier's plan what the step brings to its pass: k drafts and the token after them."""
    verifier.plan_step(req.seq.seq_id, k + 1, 1 + sum(req.draft_gains(k)))


def retrieve(task: asyncio.Task) -> None:
    """A task whose answer no one awaits: its failure, if any, matters to no one."""
    if not task.cancelled():
        task.exception()
