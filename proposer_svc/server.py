"""gRPC front of the proposer: translates splitspec.v1 messages to ProposerService calls."""

from __future__ import annotations

import grpc

from proposer_svc.service import ProposerService
from protos import splitspec_v1_pb2 as pb
from protos import splitspec_v1_pb2_grpc as pb_grpc
from splitspec import wire
from splitspec.grpc_server import CONTRACT_VERSION
from splitspec.stream_dispatch import dispatch_stream


class ProposerServicer(pb_grpc.ProposerServicer):
    def __init__(self, service: ProposerService) -> None:
        self.service = service

    async def GetInfo(self, request: pb.InfoRequest, context) -> pb.ProposerInfo:
        return pb.ProposerInfo(
            method=self.service.method,
            num_speculative_tokens=self.service.num_speculative_tokens,
            contract_version=CONTRACT_VERSION,
        )

    async def Propose(self, request_iterator, context):
        opened: set[str] = set()

        async def handle(request: pb.ProposerRequest) -> pb.ProposerResponse:
            response = pb.ProposerResponse(call_id=request.call_id, seq_id=request.seq_id)
            try:
                kind = request.WhichOneof("kind")
                if kind == "draft":
                    step = request.draft
                    opened.add(request.seq_id)
                    outcome = await self.service.draft(
                        request.seq_id,
                        committed_len=step.committed_len,
                        start=step.start,
                        token_ids=list(step.token_ids),
                        num_tokens=step.num_tokens,
                        temperature=step.temperature,
                        top_k=step.top_k,
                        seed=step.seed,
                    )
                    response.draft.committed_len = step.committed_len
                    response.draft.needs_full_context = outcome.needs_full_context
                    response.draft.drafts.extend(wire.draft_to_proto(outcome.draft))
                elif kind == "release":
                    opened.discard(request.seq_id)
                    await self.service.release(request.seq_id)
                    response.ack.SetInParent()
                else:
                    response.error.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
                    response.error.message = "empty ProposerRequest: set draft or release"
            except Exception as exc:  # report, keep the stream and the server alive
                response.error.code = grpc.StatusCode.INTERNAL.value[0]
                response.error.message = f"{type(exc).__name__}: {exc}"
            return response

        async def release_all() -> None:
            for seq_id in list(opened):
                await self.service.release(seq_id)

        async for response in dispatch_stream(request_iterator, handle, release_all):
            yield response
