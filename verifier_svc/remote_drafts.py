"""Drafts the verifier asks a proposer for itself (VerifyStep.remote_draft, gateway --direct-drafts).

A step with a remote draft gets its drafts right before it runs, after every token the steps before it
committed, from the sequence's proposer over a stream of the verifier's own. The target's hidden states
behind those tokens go with the request, straight from the pass that made them. So a round crosses one
link there and back (verifier -> proposer -> verifier) and never the sender's, and the sender can keep
such steps in flight (VerifyStep.pipelined) for any drafter, hidden-state drafters included.

While a step's pass runs, the verifier already asks the proposer for the next draft after the step's
likeliest outcomes (drafters that read hidden states cannot): every draft accepted
(DraftStep.assumed_token_ids), and each of the first `ahead_rejections` drafts rejected, with the drafts
before it accepted (DraftStep.excluded_first_token_ids names the rejected one). With a draft accepted
with probability a, the step stops at draft j with probability a^j(1 - a), most often at the first.
Each such draft's first token guesses the token the pass adds after the outcome's accepted drafts; when
the step commits exactly those and that guess, the rest is the next step's draft, and that step waits
for no proposer. Every other draft made ahead is dropped. A proposer whose guesses after a rejection
are seldom right (the n-grams' usually are not; a draft model's next best often is) is asked for them
only now and then, to notice when they start to pay.

The drafts are exactly those the sender would have fetched itself: the same DraftStep, on the same
committed tokens, with the same seed, so output is unchanged. A proposer that fails or stays silent
past the timeout costs the step its drafts, never a token: the step verifies none and reports it, and
the proposer is skipped for a second before it is asked again.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field, replace

import grpc
import torch

from splitspec.config import MAX_TREE_WIDTH
from splitspec.draft_limits import DEFAULT_AHEAD_REJECTIONS, MAX_REMOTE_DRAFT_TIMEOUT_S
from splitspec.drafts import Draft, HiddenStates
from splitspec.errors import ServiceError
from splitspec.rpc import wire
from splitspec.rpc.channels import Channels
from splitspec.rpc.multiplexed_stream import MultiplexedStream
from splitspec.rpc.proposer_client import DraftCall, ProposerClient, ProposerFeed
from splitspec.sampling_params import SamplingParams
from splitspec_protos import splitspec_v1_pb2 as pb
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc

MAX_ADDRESS_CHARS = 255


def _refuse(field_name: str, problem: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"remote_draft.{field_name}: {problem}")


@dataclass(frozen=True)
class RemoteDraftSpec:
    num_tokens: int
    proposer: str
    server_name: str = ""
    num_prompt_tokens: int = 0
    timeout_s: float = 1.0
    skip_rejection_drafts: bool = False
    """The proposer has no other guess after a rejection: draft ahead only for every draft accepted."""
    tree_width: int = 1
    """DraftStep.tree_width of the drafts fetched when the step runs; drafts ahead are chains."""

    def check(self) -> None:
        host, _, port = self.proposer.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536 or len(self.proposer) > MAX_ADDRESS_CHARS:
            raise _refuse(
                "proposer", f"must be host:port (at most {MAX_ADDRESS_CHARS} characters), got {self.proposer!r}"
            )
        if not (self.proposer.isascii() and self.proposer.isprintable()):
            raise _refuse("proposer", "must be printable ASCII")
        if len(self.server_name) > MAX_ADDRESS_CHARS or not (
            self.server_name.isascii() and self.server_name.isprintable()
        ):
            raise _refuse("server_name", f"must be at most {MAX_ADDRESS_CHARS} printable ASCII characters")
        if not math.isfinite(self.timeout_s) or not 0 < self.timeout_s <= MAX_REMOTE_DRAFT_TIMEOUT_S:
            raise _refuse("timeout_s", f"must be in (0, {MAX_REMOTE_DRAFT_TIMEOUT_S}] seconds, got {self.timeout_s}")
        if not 1 <= self.tree_width <= MAX_TREE_WIDTH:
            raise _refuse("tree_width", f"at most {MAX_TREE_WIDTH}, got {self.tree_width}")


@dataclass
class RemoteOutcome:
    draft: Draft
    wait_s: float = 0.0
    failed: bool = False


@dataclass
class _Ahead:
    """The drafts asked for while a step's pass runs: one per outcome, by how many drafts it accepts."""

    base: int  # the committed tokens they were asked after
    drafts: list[int]  # the step's drafts
    by_accepted: dict[int, asyncio.Task]

    def outcome_task(self, committed: list[int]) -> asyncio.Task | None:
        """The draft asked for the outcome that committed these tokens after `base`, if one was."""
        accepted = 0
        while accepted < min(len(self.drafts), len(committed)) and committed[accepted] == self.drafts[accepted]:
            accepted += 1
        return self.by_accepted.get(accepted) if len(committed) == accepted + 1 else None


@dataclass
class _Held:
    """The sequence's proposer, what it holds of it and has yet to receive, and the drafts made ahead."""

    proposer: str
    server_name: str
    feed: ProposerFeed
    ahead: _Ahead | None = None


MIN_REJECTION_HIT_RATE = 0.2
"""Drafts made ahead for a rejection are asked for while at least this share of those whose outcome came
were used: below it, they seldom repay the proposer's extra draft each step."""
REJECTION_PROBE_EVERY = 16
HIT_RATE_WEIGHT = 0.1  # an average over about the last ten outcomes


@dataclass
class RejectionGuesses:
    """How often a proposer's drafts made ahead for a rejection are used when their outcome comes."""

    hit_rate: float = 1.0
    skipped: int = 0

    def worth_asking(self) -> bool:
        """While they pay; otherwise on every REJECTION_PROBE_EVERY-th step only."""
        if self.hit_rate >= MIN_REJECTION_HIT_RATE:
            return True
        self.skipped = (self.skipped + 1) % REJECTION_PROBE_EVERY
        return self.skipped == 0

    def came(self, used: bool) -> None:
        self.hit_rate += HIT_RATE_WEIGHT * (float(used) - self.hit_rate)


@dataclass
class _Link:
    channel: grpc.aio.Channel
    client: ProposerClient
    held: set[str] = field(default_factory=set)
    rejection_guesses: RejectionGuesses = field(default_factory=RejectionGuesses)


def _dropped(task: asyncio.Task) -> None:
    """A draft made ahead for an outcome that did not come: its failure, if any, matters to no one."""
    if not task.cancelled():
        task.exception()


class ProposerLinks:
    """The verifier's streams to the proposers its sequences draft on, and what each one holds."""

    def __init__(self, channels: Channels, ahead_rejections: int = DEFAULT_AHEAD_REJECTIONS) -> None:
        """ahead_rejections: for how many of a step's first drafts to draft ahead after their rejection."""
        self._channels = channels
        self.ahead_rejections = ahead_rejections
        self._links: dict[tuple[str, str], _Link] = {}
        self._held: dict[str, _Held] = {}
        self._releases: set[asyncio.Task] = set()
        self.ahead_outcomes = {"hit": 0, "hit_after_rejection": 0, "miss": 0}
        """Steps that found a draft made ahead for their outcome (every draft accepted, or one rejected),
        or none."""

    def received(self, seq_id: str, hidden: torch.Tensor | None) -> None:
        """A step's hidden states, kept for the sequence's next remote draft: the newest alone for
        drafters that read the last state, every row (none skipped) for those that read them all."""
        held = self._held.get(seq_id)
        if held is not None and hidden is not None:
            held.feed.receive(wire.tensor_to_proto(hidden))

    def follow(self, seq_id: str, spec: RemoteDraftSpec, tokens: list[int], mode: HiddenStates) -> None:
        """Have the sequence draft on spec.proposer from now on. One moving from another proposer starts
        there with nothing sent, and the hidden states the last one had yet to receive (as a move does
        through the gateway); the last one is released."""
        held = self._held.get(seq_id)
        if held is not None and (held.proposer, held.server_name) == (spec.proposer, spec.server_name):
            return
        if held is not None:
            self._release_on(seq_id, held, tokens)
        hidden = held.feed.hidden if held is not None else None
        self._held[seq_id] = _Held(spec.proposer, spec.server_name, ProposerFeed(mode, hidden=hidden))

    def draft_ahead(
        self,
        seq_id: str,
        tokens: list[int],
        drafts: list[int],
        params: SamplingParams,
        seed: int,
        spec: RemoteDraftSpec,
    ) -> None:
        """While `drafts` after `tokens` are verified, ask for the draft after each likely outcome: a guess
        at the token the pass adds, then the next step's draft (not for drafters that read hidden
        states, which assumed tokens lack)."""
        held = self._held.get(seq_id)
        if held is None or held.feed.mode != HiddenStates.NONE or not drafts or held.ahead is not None:
            return
        if spec.tree_width > 1 and not params.greedy:  # drafts ahead are chains; a seed must reproduce trees
            return
        link = self._link(held)
        if not link.client.up:
            return
        ahead_spec = replace(spec, num_tokens=spec.num_tokens + 1, tree_width=1)
        loop = asyncio.get_running_loop()
        by_accepted = {}
        worth_it = (
            self.ahead_rejections > 0 and not spec.skip_rejection_drafts and link.rejection_guesses.worth_asking()
        )
        rejections = min(self.ahead_rejections, len(drafts)) if worth_it else 0
        for accepted in [len(drafts), *range(rejections)]:
            assumed, excluded = drafts[:accepted], drafts[accepted : accepted + 1]
            call = self._call(link, seq_id, held, list(tokens), params, seed, ahead_spec, assumed, excluded)
            by_accepted[accepted] = loop.create_task(call)
        held.ahead = _Ahead(len(tokens), list(drafts), by_accepted)

    async def take_ahead(self, seq_id: str, tokens: list[int], num_tokens: int) -> RemoteOutcome | None:
        """The draft made ahead for the outcome that came, if its guess is the token the step added after
        the accepted drafts; None otherwise. Every draft made ahead is dropped but the one returned."""
        held = self._held.get(seq_id)
        if held is None or held.ahead is None:
            return None
        started = time.perf_counter()
        ahead, held.ahead = held.ahead, None
        committed = tokens[ahead.base :]
        task = ahead.outcome_task(committed)
        for other in ahead.by_accepted.values():
            if other is not task:
                other.add_done_callback(_dropped)
        result = None
        if task is not None:
            try:
                result = await task
            except (ConnectionError, asyncio.TimeoutError, ServiceError):
                held.feed.sent = 0
                result = None
        if result is not None and result.needs_full_context:
            held.feed.sent, result = 0, None
        if result is not None:
            held.feed.sent = ahead.base  # it holds the tokens committed then, not the ones it assumed
        used = result is not None and len(result.drafts) >= 2 and result.drafts[0].token_id == committed[-1]
        after_rejection = committed[:-1] != ahead.drafts
        if task is not None and after_rejection:
            self._link(held).rejection_guesses.came(used)
        if not used:
            self.ahead_outcomes["miss"] += 1
            return None
        self.ahead_outcomes["hit_after_rejection" if after_rejection else "hit"] += 1
        return RemoteOutcome(wire.draft_from_proto(result.drafts[1 : 1 + num_tokens]), time.perf_counter() - started)

    async def draft(
        self, seq_id: str, tokens: list[int], params: SamplingParams, seed: int, spec: RemoteDraftSpec
    ) -> RemoteOutcome:
        """The proposer's draft after `tokens` (the committed ones); none, with failed set, if it fails.
        The sequence must follow a proposer (`follow`)."""
        held = self._held[seq_id]
        link = self._link(held)
        started = time.perf_counter()
        if not link.client.up:
            return RemoteOutcome(Draft(), failed=True)
        try:
            result = await link.client.draft(seq_id, tokens, held.feed, _draft_call(params, seed, spec))
        except (ConnectionError, asyncio.TimeoutError, ServiceError):
            link.client.mark_down()
            held.feed.sent = 0
            return RemoteOutcome(Draft(), time.perf_counter() - started, failed=True)
        link.held.add(seq_id)
        draft = wire.draft_from_proto(result.drafts[: spec.num_tokens])
        return RemoteOutcome(draft, time.perf_counter() - started)

    def release(self, seq_id: str, tokens: list[int]) -> None:
        """The sequence ended here: its proposer is told, with the tokens it has not seen yet."""
        held = self._held.pop(seq_id, None)
        if held is not None:
            self._release_on(seq_id, held, tokens)

    async def close(self) -> None:
        await asyncio.gather(*self._releases, return_exceptions=True)
        for link in self._links.values():
            await link.client.close()
            await link.channel.close()

    def _link(self, held: _Held) -> _Link:
        key = (held.proposer, held.server_name)
        link = self._links.get(key)
        if link is None:
            channel = self._channels.open(held.proposer, held.server_name or None)
            stream = MultiplexedStream(pb_grpc.ProposerStub(channel).Propose, f"proposer {held.proposer}")
            link = self._links[key] = _Link(channel, ProposerClient(stream))
        return link

    async def _call(
        self,
        link: _Link,
        seq_id: str,
        held: _Held,
        tokens: list[int],
        params: SamplingParams,
        seed: int,
        spec: RemoteDraftSpec,
        assumed: list[int] | None = None,
        excluded_first: list[int] | None = None,
    ) -> pb.DraftResult:
        """A draft ahead, after these tokens (and none of excluded_first as its first)."""
        call = _draft_call(params, seed, spec)
        return await link.client.send(seq_id, tokens, held.feed, call, None, assumed, excluded_first)

    def _release_on(self, seq_id: str, held: _Held, tokens: list[int]) -> None:
        link = self._links.get((held.proposer, held.server_name))
        if link is None or seq_id not in link.held:
            return
        link.held.discard(seq_id)
        task = asyncio.get_running_loop().create_task(self._send_release(link, seq_id, held, list(tokens)))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    @staticmethod
    async def _send_release(link: _Link, seq_id: str, held: _Held, tokens: list[int]) -> None:
        """After any draft still being made ahead, so that the release is the last the proposer hears."""
        if held.ahead is not None:
            results = await asyncio.gather(*held.ahead.by_accepted.values(), return_exceptions=True)
            if any(isinstance(r, pb.DraftResult) and not r.needs_full_context for r in results):
                held.feed.sent = held.ahead.base
        try:
            await link.client.release(seq_id, held.feed.sent, tokens)
        except (ConnectionError, asyncio.TimeoutError):
            pass  # the proposer forgets the sequence at its client's deadline, or when it restarts


def _draft_call(params: SamplingParams, seed: int, spec: RemoteDraftSpec) -> DraftCall:
    return DraftCall(spec.num_tokens, params, seed, spec.num_prompt_tokens, spec.timeout_s, tree_width=spec.tree_width)
