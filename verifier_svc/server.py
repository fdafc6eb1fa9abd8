"""gRPC front of the verifier: translates splitspec.v1 messages to VerifierService calls."""

from __future__ import annotations

from protos import splitspec_v1_pb2 as pb
from protos import splitspec_v1_pb2_grpc as pb_grpc
from splitspec import wire
from splitspec.config import HIDDEN_STATES_ALL, HIDDEN_STATES_LAST, HIDDEN_STATES_NONE
from splitspec.errors import ServiceError
from splitspec.grpc_server import CONTRACT_VERSION
from splitspec.sampling_params import SamplingParams
from splitspec.stream_dispatch import serve_sequence_stream
from verifier_svc.service import VerifierService


class VerifierServicer(pb_grpc.VerifierServicer):
    def __init__(self, service: VerifierService, model_name: str, eos_token_ids: list[int]) -> None:
        self.service = service
        self.model_name = model_name
        self.eos_token_ids = eos_token_ids

    async def GetInfo(self, request: pb.InfoRequest, context) -> pb.VerifierInfo:
        runner = self.service.runner
        allocator = getattr(runner, "allocator", None)
        cost = self.service.cost_model
        return pb.VerifierInfo(
            cost_rows=cost.rows if cost else [],
            cost_seconds=cost.seconds if cost else [],
            model=self.model_name,
            vocab_size=runner.vocab_size,
            max_model_len=runner.max_model_len,
            eos_token_ids=self.eos_token_ids,
            num_free_blocks=self.service.num_free_blocks,
            num_total_blocks=allocator.num_blocks if allocator else 0,
            num_sequences=len(self.service.sequences),
            max_num_seqs=self.service.max_num_seqs,
            contract_version=CONTRACT_VERSION,
        )

    async def Verify(self, request_iterator, context):
        async def handle(request: pb.VerifierRequest, response: pb.VerifierResponse) -> None:
            kind = request.WhichOneof("kind")
            if kind == "start":
                start = request.start
                self.service.add(request.seq_id, list(start.token_ids), _params(start), start.seed, _hidden_states(start))
                response.ack.SetInParent()
            elif kind == "step":
                outcome = await self.service.step(
                    request.seq_id, request.step.committed_len, wire.draft_from_proto(request.step.drafts)
                )
                response.result.committed_len = outcome.committed_len
                response.result.num_accepted = outcome.num_accepted
                response.result.token_ids.extend(outcome.token_ids)
                if outcome.hidden_state is not None:
                    response.result.hidden_states.CopyFrom(wire.tensor_to_proto(outcome.hidden_state))
            else:
                raise ServiceError("INVALID_ARGUMENT", "empty VerifierRequest: set start, step or release")

        def new_response(request: pb.VerifierRequest) -> pb.VerifierResponse:
            return pb.VerifierResponse(call_id=request.call_id, seq_id=request.seq_id)

        async for response in serve_sequence_stream(request_iterator, new_response, handle, self.service.release):
            yield response


def _params(start: pb.StartSequence) -> SamplingParams:
    try:
        return SamplingParams(temperature=start.temperature, top_k=start.top_k, top_p=start.top_p or 1.0, max_tokens=None)
    except ValueError as exc:
        raise ServiceError("INVALID_ARGUMENT", str(exc)) from None


def _hidden_states(start: pb.StartSequence) -> str:
    if start.return_all_hidden_states:
        return HIDDEN_STATES_ALL
    return HIDDEN_STATES_LAST if start.return_hidden_states else HIDDEN_STATES_NONE
