"""The gateway's view of one verifier or proposer process: a multiplexed stream, liveness and load.

A backend is *retired* when discovery no longer lists its address: it takes no new sequences, the
ones it holds move away at their next round, and it is closed once it holds none.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitspec.adaptive_k import Ewma, PassCostModel
from splitspec.drafter_traits import DrafterTraits
from splitspec.drafts import Draft, HiddenStates
from splitspec.rpc import wire
from splitspec.rpc.channels import Channels
from splitspec.rpc.multiplexed_stream import MultiplexedStream
from splitspec.rpc.proposer_client import DraftCall, ProposerClient, ProposerFeed, raise_if_error
from splitspec.rpc.time_limits import time_left
from splitspec.sampling_params import SamplingParams
from splitspec.sequence import Sequence
from splitspec.token_ban import TokenBan
from splitspec.token_penalties import TokenPenalties
from splitspec_protos import splitspec_v1_pb2 as pb
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc

VERIFIER_SERVICE = pb.DESCRIPTOR.services_by_name["Verifier"].full_name
PROPOSER_SERVICE = pb.DESCRIPTOR.services_by_name["Proposer"].full_name


class VerifierBackend:
    def __init__(self, address: str, channels: Channels, server_name: str | None = None) -> None:
        self.address = address
        self.channel = channels.open(address, server_name)
        self.stub = pb_grpc.VerifierStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.stream = MultiplexedStream(self.stub.Verify, f"verifier {address}")
        self.info: pb.VerifierInfo | None = None
        self.cost_model: PassCostModel | None = None  # the verifier's measured pass costs
        self.link = Ewma()  # seconds there and back, from the GetInfo calls of refresh_info
        self.num_sequences = 0  # this gateway's sequences on it
        self.retired = False
        self.superseded = False  # a newer channel to the same verifier takes new sequences
        self._own_at_refresh = 0  # num_sequences when info was last read
        self._round_plan: dict[str, tuple[int, float]] = {}  # seq_id -> (rows, expected tokens) of its last step

    def others_in_pass(self, seq_id: str) -> tuple[int, float]:
        """Rows and expected tokens the other sequences on this verifier last brought to a pass:
        what a pass carries besides this sequence, since the verifier batches their steps together."""
        rows = sum(r for s, (r, _) in self._round_plan.items() if s != seq_id)
        tokens = sum(t for s, (_, t) in self._round_plan.items() if s != seq_id)
        return rows, tokens

    def plan_step(self, seq_id: str, rows: int, expected_tokens: float) -> None:
        self._round_plan[seq_id] = (rows, expected_tokens)

    def forget(self, seq_id: str) -> None:
        self._round_plan.pop(seq_id, None)

    def mark_down(self) -> None:
        """Take no new sequences until the gateway's watcher hears from it again (refresh_info)."""
        self.info = None

    @property
    def load(self) -> float:
        """The share of its sequence slots in use, from every gateway that shares it: what it reported
        at the last refresh, plus what this gateway started or ended on it since."""
        if self.info is None or self.info.max_num_seqs == 0:
            return float(self.num_sequences)
        reported = self.info.num_sequences + self.num_sequences - self._own_at_refresh
        return max(reported, self.num_sequences) / self.info.max_num_seqs

    @property
    def kv_free_share(self) -> float:
        """The share of its KV cache blocks free at the last refresh: the tie-breaker between verifiers
        with the same load (long sequences fill the cache without filling the slots)."""
        if self.info is None or self.info.num_total_blocks == 0:
            return 0.0
        return self.info.num_free_blocks / self.info.num_total_blocks

    def retire(self) -> None:
        self.retired = True
        self.info = None

    async def refresh(self) -> bool:
        return await self.refresh_info() is not None

    async def refresh_info(self, timeout: float = 2.0) -> pb.VerifierInfo | None:
        """Its info while it is SERVING; None (take no sequences) when it is unreachable, draining,
        retired or its model failed."""
        if self.retired:
            return None
        try:
            health = await self.health.Check(health_pb2.HealthCheckRequest(service=VERIFIER_SERVICE), timeout=timeout)
            if health.status != health_pb2.HealthCheckResponse.SERVING:
                self.info = None
                return None
            own = self.num_sequences
            sent = time.perf_counter()
            info = await self.stub.GetInfo(pb.InfoRequest(), timeout=timeout)
            self.link.add(time.perf_counter() - sent)
        except grpc.aio.AioRpcError:
            self.info = None
            return None
        if self.retired:  # retired while the call was out
            return None
        self.info, self._own_at_refresh = info, own
        if self.info.cost_rows and self.cost_model is None:
            self.cost_model = PassCostModel(dict(zip(self.info.cost_rows, self.info.cost_seconds)))
        return self.info

    async def start(
        self,
        seq_id: str,
        token_ids: list[int],
        params: SamplingParams,
        seed: int,
        hidden_states: HiddenStates = HiddenStates.NONE,
        trace: pb.TraceContext | None = None,
        deadline: float = math.inf,
        hidden_layers: tuple[int, ...] = (),
        token_ban: TokenBan | None = None,
        penalties: TokenPenalties | None = None,
        prompt_len: int = 0,
    ) -> None:
        """trace: the client request's context, which the verifier's spans for the sequence continue.
        deadline: the client's, on time.monotonic(); the verifier releases the sequence once it passes.
        hidden_layers: the target layers whose inputs make the states returned (EAGLE-3).
        token_ban: what the target may not emit yet (min_tokens). penalties: on the target's logits.
        prompt_len: where the output starts in token_ids (the penalties and a grammar read the output)."""
        request = pb.VerifierRequest(seq_id=seq_id, trace_context=trace)
        request.start.time_limit_s = time_left(deadline, time.monotonic())
        request.start.return_hidden_states = hidden_states != HiddenStates.NONE
        request.start.return_all_hidden_states = hidden_states == HiddenStates.ALL
        request.start.hidden_layers.extend(hidden_layers)
        request.start.token_ids.extend(token_ids)
        request.start.temperature = params.temperature
        request.start.top_k = params.top_k
        request.start.top_p = params.top_p
        request.start.seed = seed
        if params.logprobs is not None:
            request.start.logprobs = params.logprobs
        if params.prompt_logprobs is not None:
            request.start.prompt_logprobs = params.prompt_logprobs
        if token_ban is not None:
            request.start.banned_token_ids.extend(token_ban.token_ids)
            request.start.banned_until_len = token_ban.until_length
        request.start.prompt_len = prompt_len
        if penalties is not None:
            request.start.presence_penalty = penalties.presence
            request.start.frequency_penalty = penalties.frequency
            request.start.repetition_penalty = penalties.repetition
        request.start.min_p = params.min_p
        request.start.logit_bias.update(params.logit_bias or {})
        if params.structured_outputs is not None:
            request.start.structured_outputs.CopyFrom(wire.structured_outputs_to_proto(params.structured_outputs))
        raise_if_error(await self.stream.call(request))

    async def step(
        self,
        seq_id: str,
        committed_len: int,
        draft: Draft,
        local: pb.LocalDraft | None = None,
        pipelined: bool = False,
        assumed: list[int] | None = None,
        remote: pb.RemoteDraft | None = None,
        every_draft: bool = False,
    ) -> pb.StepResult:
        """local: VerifyStep.local_draft, for the verifier to draft itself (its n-grams or its
        speculator) instead of `draft`. pipelined, assumed: VerifyStep.pipelined and assumed_token_ids.
        remote: VerifyStep.remote_draft, for the verifier to ask the proposer itself. every_draft:
        VerifyStep.every_draft, no cut."""
        request = pb.VerifierRequest(seq_id=seq_id)
        request.step.committed_len = committed_len
        request.step.pipelined = pipelined
        request.step.every_draft = every_draft
        request.step.assumed_token_ids.extend(assumed or ())
        request.step.drafts.extend(wire.draft_to_proto(draft))
        if local is not None:
            request.step.local_draft.CopyFrom(local)
        if remote is not None:
            request.step.remote_draft.CopyFrom(remote)
        response = await self.stream.call(request)
        raise_if_error(response)
        return response.result

    async def release(self, seq_id: str) -> None:
        request = pb.VerifierRequest(seq_id=seq_id)
        request.release.SetInParent()
        await self.stream.call(request, timeout=5.0)

    async def close(self) -> None:
        await self.stream.close()
        await self.channel.close()


class ProposerBackend:
    """A proposer, whether it takes sequences, and how many of this gateway's it serves."""

    def __init__(self, address: str, channels: Channels, server_name: str | None = None) -> None:
        self.address = address
        self.server_name = server_name  # what its certificate names, when not the host in `address`
        self.channel = channels.open(address, server_name)
        self.stub = pb_grpc.ProposerStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.client = ProposerClient(MultiplexedStream(self.stub.Propose, f"proposer {address}"))
        self.serving = True  # its health, as last checked: False while it drains or does not answer
        self.retired = False
        self.superseded = False  # a newer channel to the same proposer takes new sequences
        self.num_sequences = 0
        self.link = Ewma()  # seconds there and back, from the health checks of refresh_health
        self.draft_token = Ewma()  # seconds of drafting per draft token: a draft's wait beyond the link
        self.traits: DrafterTraits | None = None  # what it reported of its drafter (GetInfo), once serving
        self.refusal: str | None = None  # why the gateway's drafter pool refused it (gateway_svc.drafter_pool)

    @property
    def available(self) -> bool:
        """Whether it drafts for the sequences it holds: it reported a drafter the pool admitted."""
        admitted = self.traits is not None and self.refusal is None
        return admitted and self.serving and not self.retired and self.client.up

    @property
    def takes_new(self) -> bool:
        """Whether a sequence may move to it or start on it."""
        return self.available and not self.superseded

    def mark_down(self) -> None:
        self.client.mark_down()

    def retire(self) -> None:
        self.retired = True

    async def refresh(self) -> bool:
        return await self.refresh_health()

    async def refresh_health(self, timeout: float = 2.0) -> bool:
        """Whether it is SERVING; a draining proposer says NOT_SERVING and gets no more drafts. Each time
        it comes to serve, it is asked what its drafter is (it may be a new process at the address)."""
        was_serving = self.serving and self.traits is not None
        try:
            sent = time.perf_counter()
            health = await self.health.Check(health_pb2.HealthCheckRequest(service=PROPOSER_SERVICE), timeout=timeout)
            self.link.add(time.perf_counter() - sent)
            self.serving = health.status == health_pb2.HealthCheckResponse.SERVING
            if self.serving and not was_serving:
                self.traits = wire.traits_from_proto(await self.stub.GetInfo(pb.InfoRequest(), timeout=timeout))
        except grpc.aio.AioRpcError:
            self.serving = False
        return self.serving

    async def draft(
        self,
        seq: Sequence,
        feed: ProposerFeed,
        num_tokens: int,
        timeout: float,
        trace: pb.TraceContext | None = None,
        deadline: float = math.inf,
        tree_width: int = 1,
    ) -> pb.DraftResult:
        """The draft after the sequence's committed tokens (ProposerClient.draft), a tree where
        tree_width > 1 and the drafter branches. deadline: the client's, on time.monotonic(); the
        proposer forgets the sequence once it passes."""
        call = replace(self._call(seq, num_tokens, timeout, trace, deadline), tree_width=tree_width)
        sent = time.perf_counter()
        result = await self.client.draft(seq.seq_id, seq.tokens, feed, call)
        if num_tokens > 0:
            waited = time.perf_counter() - sent - (self.link.value or 0.0)
            self.draft_token.add(max(0.0, waited) / num_tokens)
        return result

    async def draft_after(
        self,
        seq: Sequence,
        feed: ProposerFeed,
        num_tokens: int,
        timeout: float,
        assumed: list[int],
        trace: pb.TraceContext | None = None,
        deadline: float = math.inf,
    ) -> pb.DraftResult:
        """A draft made ahead (gateway_svc.draft_ahead), after these uncommitted tokens; its time is not
        a round's wait, so it is not timed."""
        call = self._call(seq, num_tokens, timeout, trace, deadline)
        return await self.client.send(seq.seq_id, seq.tokens, feed, call, assumed=assumed)

    @staticmethod
    def _call(
        seq: Sequence, num_tokens: int, timeout: float, trace: pb.TraceContext | None, deadline: float
    ) -> DraftCall:
        return DraftCall(
            num_tokens, seq.params, seq.seed, len(seq.prompt_token_ids), timeout, trace,
            time_left(deadline, time.monotonic()),
        )  # fmt: skip

    async def release(self, seq_id: str, sent: int = 0, tokens: list[int] | None = None) -> None:
        """tokens: the sequence's committed tokens, of which the proposer holds the first `sent`."""
        await self.client.release(seq_id, sent, tokens)

    async def close(self) -> None:
        await self.client.close()
        await self.channel.close()
