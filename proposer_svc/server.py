"""gRPC front of the proposer: translates splitspec.v1 messages to ProposerService calls."""

from __future__ import annotations

from proposer_svc.service import ProposerService
from protos import splitspec_v1_pb2 as pb
from protos import splitspec_v1_pb2_grpc as pb_grpc
from splitspec import wire
from splitspec.config import HIDDEN_STATES_ALL
from splitspec.errors import ServiceError
from splitspec.grpc_server import CONTRACT_VERSION
from splitspec.stream_dispatch import serve_sequence_stream


class ProposerServicer(pb_grpc.ProposerServicer):
    def __init__(self, service: ProposerService) -> None:
        self.service = service

    async def GetInfo(self, request: pb.InfoRequest, context) -> pb.ProposerInfo:
        return pb.ProposerInfo(
            method=self.service.method,
            num_speculative_tokens=self.service.num_speculative_tokens,
            contract_version=CONTRACT_VERSION,
            needs_hidden_states=self.service.proposer.needs_hidden_states,
            needs_all_hidden_states=self.service.proposer.hidden_states == HIDDEN_STATES_ALL,
        )

    async def Propose(self, request_iterator, context):
        async def handle(request: pb.ProposerRequest, response: pb.ProposerResponse) -> None:
            if request.WhichOneof("kind") != "draft":
                raise ServiceError("INVALID_ARGUMENT", "empty ProposerRequest: set draft or release")
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
            )
            response.draft.committed_len = step.committed_len
            response.draft.needs_full_context = outcome.needs_full_context
            response.draft.drafts.extend(wire.draft_to_proto(outcome.draft))

        def new_response(request: pb.ProposerRequest) -> pb.ProposerResponse:
            return pb.ProposerResponse(call_id=request.call_id, seq_id=request.seq_id)

        async for response in serve_sequence_stream(request_iterator, new_response, handle, self.service.release):
            yield response
