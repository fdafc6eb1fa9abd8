"""gRPC front of the proposer: translates splitspec.v1 messages to ProposerService calls, and
`run_proposer`, which builds the drafter and serves it until SIGTERM."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2

from proposer_svc.factory import build_proposer
from proposer_svc.proposer import Proposer
from proposer_svc.service import ProposerService
from splitspec.config import DEFAULT_NUM_SPECULATIVE_TOKENS, SpeculationMethod, SpeculativeConfig
from splitspec.draft_limits import MAX_DRAFTS_PER_STEP
from splitspec.errors import ServiceError
from splitspec.metrics import service_meter
from splitspec.rpc import wire
from splitspec.rpc.compute_thread import run_on_compute_thread
from splitspec.rpc.grpc_server import CONTRACT_VERSION, ServerOptions, serve, set_health
from splitspec.rpc.stream_dispatch import serve_sequence_stream
from splitspec.tracing import start_tracing, traces_endpoint
from splitspec_protos import splitspec_v1_pb2 as pb
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Proposer"].full_name


class ProposerServicer(pb_grpc.ProposerServicer):
    def __init__(self, service: ProposerService) -> None:
        self.service = service

    async def GetInfo(self, request: pb.InfoRequest, context) -> pb.ProposerInfo:
        return wire.traits_to_proto(self.service.traits, CONTRACT_VERSION)

    async def Propose(self, request_iterator, context):
        async def handle(request: pb.ProposerRequest, response: pb.ProposerResponse) -> None:
            if request.WhichOneof("kind") != "draft":
                raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "empty ProposerRequest: set draft or release")
            step = request.draft
            outcome = await self.service.draft(
                request.seq_id,
                committed_len=step.committed_len,
                start=step.start,
                token_ids=list(step.token_ids),
                num_tokens=step.num_tokens,
                temperature=step.temperature,
                top_k=step.top_k,
                seed=step.seed,
                hidden_state=wire.tensor_from_proto(step.hidden_state) if step.HasField("hidden_state") else None,
                assumed_token_ids=list(step.assumed_token_ids),
                excluded_first_token_ids=list(step.excluded_first_token_ids),
                num_prompt_tokens=step.num_prompt_tokens,
                time_limit_s=step.time_limit_s,
                tree_width=max(1, step.tree_width),
                trace_context=(request.trace_context.traceparent, request.trace_context.tracestate),
            )
            response.draft.committed_len = step.committed_len
            response.draft.needs_full_context = outcome.needs_full_context
            response.draft.drafts.extend(wire.draft_to_proto(outcome.draft))

        def new_response(request: pb.ProposerRequest) -> pb.ProposerResponse:
            return pb.ProposerResponse(call_id=request.call_id, seq_id=request.seq_id)

        async def finish(request: pb.ProposerRequest) -> None:
            end = request.release
            await self.service.release(request.seq_id, end.start, list(end.token_ids))

        async for response in serve_sequence_stream(
            request_iterator, new_response, handle, self.service.release, finish
        ):
            yield response


@dataclass(frozen=True)
class ProposerSettings:
    server: ServerOptions
    speculative: SpeculativeConfig = SpeculativeConfig(SpeculationMethod.NGRAM, DEFAULT_NUM_SPECULATIVE_TOKENS)
    target_vocab_size: int | None = None
    target_model: str | None = None
    """The target checkpoint, for drafters that use its output head (eagle)."""
    device: str = "auto"
    """The drafter's own device (draft_model, mlp_speculator, eagle); ngram needs none."""
    batch_window_ms: float = 1.0
    max_drafts_per_step: int = MAX_DRAFTS_PER_STEP


def run_proposer(settings: ProposerSettings) -> None:
    proposer = run_on_compute_thread(_build_proposer, settings)

    async def main() -> None:
        tracing = start_tracing("proposer", traces_endpoint(settings.server.otlp_traces_endpoint))
        service = ProposerService(
            proposer,
            num_speculative_tokens=settings.speculative.num_speculative_tokens,
            batch_window_s=settings.batch_window_ms / 1000,
            meter=service_meter("proposer", settings.server),
            tracing=tracing,
            max_drafts_per_step=settings.max_drafts_per_step,
        )

        async def stop() -> None:
            await service.close()
            tracing.shutdown()

        async def register(server, health) -> None:
            service.start()
            pb_grpc.add_ProposerServicer_to_server(ProposerServicer(service), server)
            await set_health(health, SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

        await serve(
            settings.server,
            [SERVICE_NAME],
            register,
            "proposer",
            stop,
            idle=lambda: not service.contexts,  # every gateway has moved its sequences to another proposer
        )

    asyncio.run(main())


def _build_proposer(settings: ProposerSettings) -> Proposer:
    return build_proposer(
        settings.speculative,
        target_vocab_size=settings.target_vocab_size,
        target_model=settings.target_model,
        device=settings.device,
    )
