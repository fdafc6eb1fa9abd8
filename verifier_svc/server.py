"""gRPC front of the verifier: translates splitspec.v1 messages to VerifierService calls, and
`run_verifier`, which loads the target and serves it until SIGTERM."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2

from splitspec.config import RunnerConfig
from splitspec.draft_limits import DEFAULT_AHEAD_REJECTIONS, MAX_DRAFTS_PER_STEP
from splitspec.drafts import HiddenStates
from splitspec.errors import ServiceError, SplitspecError
from splitspec.metrics import service_meter
from splitspec.output_grammar import GrammarCompiler
from splitspec.rpc import wire
from splitspec.rpc.channels import Channels
from splitspec.rpc.compute_thread import run_on_compute_thread
from splitspec.rpc.grpc_server import CONTRACT_VERSION, ServerOptions, channel_options, serve, set_health
from splitspec.rpc.stream_dispatch import serve_sequence_stream
from splitspec.rpc.targets import Target
from splitspec.rpc.tls import ClientTls
from splitspec.sampling_params import SamplingParams
from splitspec.structured_outputs import StructuredOutputsParams
from splitspec.token_ban import TokenBan
from splitspec.token_penalties import TokenPenalties
from splitspec.tracing import start_tracing, traces_endpoint
from splitspec_protos import splitspec_v1_pb2 as pb
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc
from verifier_svc.local_drafts import LocalDraftSpec
from verifier_svc.local_speculator import LocalSpeculator
from verifier_svc.remote_drafts import RemoteDraftSpec
from verifier_svc.service import VerifierService

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Verifier"].full_name


class VerifierServicer(pb_grpc.VerifierServicer):
    def __init__(self, service: VerifierService, model_name: str, eos_token_ids: list[int]) -> None:
        self.service = service
        self.model_name = model_name
        self.eos_token_ids = eos_token_ids

    async def GetInfo(self, request: pb.InfoRequest, context) -> pb.VerifierInfo:
        runner = self.service.runner
        allocator = getattr(runner, "allocator", None)
        cost_rows, cost_seconds = self.service.cost_model.curve if self.service.cost_model else ([], [])
        return pb.VerifierInfo(
            cost_rows=cost_rows,
            cost_seconds=cost_seconds,
            model=self.model_name,
            vocab_size=runner.vocab_size,
            max_model_len=runner.max_model_len,
            eos_token_ids=self.eos_token_ids,
            num_free_blocks=self.service.num_free_blocks,
            num_total_blocks=allocator.num_blocks if allocator else 0,
            num_sequences=len(self.service.sequences),
            max_num_seqs=self.service.max_num_seqs,
            contract_version=CONTRACT_VERSION,
            speculator=(
                wire.traits_to_proto(self.service.speculator.traits, CONTRACT_VERSION)
                if self.service.speculator is not None
                else None
            ),
        )

    async def Verify(self, request_iterator, context):
        async def handle(request: pb.VerifierRequest, response: pb.VerifierResponse) -> None:
            kind = request.WhichOneof("kind")
            if kind == "start":
                start = request.start
                structured = _structured_outputs(start)
                grammar = None
                if structured is not None:
                    output = list(start.token_ids[start.prompt_len :])
                    grammar = await self.service.grammar_state(structured, output)
                self.service.add(
                    request.seq_id,
                    list(start.token_ids),
                    _params(start),
                    start.seed,
                    _hidden_states(start),
                    (request.trace_context.traceparent, request.trace_context.tracestate),
                    start.time_limit_s,
                    tuple(start.hidden_layers),
                    _token_ban(start),
                    _penalties(start),
                    grammar,
                    start.prompt_len,
                )
                response.ack.SetInParent()
            elif kind == "step":
                step = request.step
                local = (
                    LocalDraftSpec(
                        step.local_draft.num_tokens,
                        step.local_draft.prompt_lookup_min,
                        step.local_draft.prompt_lookup_max,
                        step.local_draft.speculator,
                        max(1, step.local_draft.tree_width),
                    )
                    if step.HasField("local_draft")
                    else None
                )
                remote = step.remote_draft
                remote_spec = (
                    RemoteDraftSpec(
                        remote.num_tokens,
                        remote.proposer,
                        remote.server_name,
                        remote.num_prompt_tokens,
                        remote.timeout_s,
                        remote.skip_rejection_drafts,
                        max(1, remote.tree_width),
                    )
                    if step.HasField("remote_draft")
                    else None
                )
                outcome = await self.service.step(
                    request.seq_id,
                    step.committed_len,
                    wire.draft_from_proto(step.drafts),
                    local,
                    step.pipelined,
                    list(step.assumed_token_ids),
                    remote_spec,
                    step.every_draft,
                )
                response.result.committed_len = outcome.committed_len
                response.result.num_accepted = outcome.num_accepted
                response.result.num_drafted = outcome.num_drafted
                response.result.draft_wait_s = outcome.draft_wait_s
                response.result.proposer_failed = outcome.proposer_failed
                response.result.token_ids.extend(outcome.token_ids)
                response.result.tree_path.extend(outcome.tree_path or ())
                if outcome.logprobs is not None:
                    response.result.logprobs.extend(wire.logprobs_to_proto(outcome.logprobs))
                if outcome.prompt_logprobs is not None:
                    response.result.prompt_logprobs.extend(wire.logprobs_to_proto(outcome.prompt_logprobs))
                if outcome.hidden_state is not None and remote_spec is None:  # remote: they went to the proposer
                    response.result.hidden_states.CopyFrom(wire.tensor_to_proto(outcome.hidden_state))
            else:
                raise ServiceError(
                    grpc.StatusCode.INVALID_ARGUMENT, "empty VerifierRequest: set start, step or release"
                )

        def new_response(request: pb.VerifierRequest) -> pb.VerifierResponse:
            return pb.VerifierResponse(call_id=request.call_id, seq_id=request.seq_id)

        async for response in serve_sequence_stream(request_iterator, new_response, handle, self.service.release):
            yield response


def _params(start: pb.StartSequence) -> SamplingParams:
    try:
        return SamplingParams(
            temperature=start.temperature,
            top_k=start.top_k,
            top_p=start.top_p or 1.0,
            max_tokens=None,
            logprobs=start.logprobs if start.HasField("logprobs") else None,
            prompt_logprobs=start.prompt_logprobs if start.HasField("prompt_logprobs") else None,
            min_p=start.min_p,
            logit_bias=dict(start.logit_bias),
        )
    except (ValueError, SplitspecError) as exc:
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None


def _token_ban(start: pb.StartSequence) -> TokenBan | None:
    if not start.banned_token_ids or not start.banned_until_len:
        return None
    return TokenBan(tuple(start.banned_token_ids), start.banned_until_len)


def _penalties(start: pb.StartSequence) -> TokenPenalties | None:
    try:
        params = SamplingParams(
            presence_penalty=start.presence_penalty,
            frequency_penalty=start.frequency_penalty,
            repetition_penalty=start.repetition_penalty or 1.0,
        )
    except SplitspecError as exc:
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"start: {exc}") from None
    if params.has_penalties and not 0 < start.prompt_len <= len(start.token_ids):
        raise ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"start.prompt_len must be in [1, {len(start.token_ids)}] with penalties, got {start.prompt_len}",
        )
    return TokenPenalties.for_request(params, start.prompt_len)


def _structured_outputs(start: pb.StartSequence) -> StructuredOutputsParams | None:
    try:
        structured = wire.structured_outputs_from_proto(start.structured_outputs)
    except SplitspecError as exc:
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"start: {exc}") from None
    if structured is not None and not 0 < start.prompt_len <= len(start.token_ids):
        raise ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"start.prompt_len must be in [1, {len(start.token_ids)}] with structured outputs, got {start.prompt_len}",
        )
    return structured


def _hidden_states(start: pb.StartSequence) -> HiddenStates:
    if start.return_all_hidden_states:
        return HiddenStates.ALL
    return HiddenStates.LAST if start.return_hidden_states else HiddenStates.NONE


@dataclass(frozen=True)
class VerifierSettings:
    server: ServerOptions
    model: str = "default"
    runner: RunnerConfig = RunnerConfig()
    """max_num_seqs also caps the sequences the service admits."""
    batch_window_ms: float = 2.0
    max_drafts_per_step: int = MAX_DRAFTS_PER_STEP
    draft_ahead_rejections: int = DEFAULT_AHEAD_REJECTIONS
    draft_cuts: bool = True
    """Each pass verifies only the drafts that pay for the batch (verifier_svc.draft_cuts)."""
    client_tls: ClientTls | None = None
    """How it calls proposers for remote drafts: over TLS when set, else plaintext."""
    proposers: tuple[Target, ...] = ()
    """The only proposers remote drafts may name; none: remote drafts are refused."""
    speculative_config: dict | None = None
    """A head to draft with beside the target, as LLM's speculative_config (verifier_svc.local_speculator)."""
    build_speculator: Callable[..., LocalSpeculator] | None = None
    """Builds it (splitspec.entrypoints.verifier_head.build_local_speculator, given by the command: the
    drafters live in proposer_svc, which the verifier does not import)."""


async def _not_serving_when_the_runner_fails(service: VerifierService, health, interval_s: float = 0.1) -> None:
    """Health goes NOT_SERVING for good once the runner cannot run passes (a tensor-parallel worker
    died) or a pass raised; in-flight steps already fail with UNAVAILABLE."""
    while service.healthy():
        await asyncio.sleep(interval_s)
    print("splitspec verifier: the model has failed; health is NOT_SERVING", file=sys.stderr, flush=True)
    await set_health(health, SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)


def run_verifier(settings: VerifierSettings) -> None:
    from splitspec.adaptive_k import PassCostModel
    from splitspec.checkpoint import resolve_checkpoint
    from splitspec.models.loader import load_runner
    from splitspec.models.runner import ModelRunner
    from splitspec.tokenizer import eos_token_ids, load_tokenizer

    path = resolve_checkpoint(settings.model)

    def load() -> tuple[ModelRunner, PassCostModel | None, LocalSpeculator | None]:
        runner = load_runner(path, settings.runner)
        speculator = None
        if settings.speculative_config is not None:
            if settings.build_speculator is None:
                raise SplitspecError("--speculative-config: this verifier was started without a way to load heads")
            speculator = settings.build_speculator(
                settings.speculative_config,
                path,
                runner.vocab_size,
                settings.runner.device,
                settings.runner.max_num_seqs,
                settings.max_drafts_per_step,
            )
        return runner, PassCostModel.calibrate(runner, max_rows=128), speculator

    runner, cost_model, speculator = run_on_compute_thread(load)
    print(f"splitspec verifier: {runner.describe_kv_cache()}", file=sys.stderr, flush=True)
    if speculator is not None:
        traits = speculator.traits
        print(
            f"splitspec verifier: drafts beside the target with {traits.method}, K={traits.num_speculative_tokens}",
            file=sys.stderr,
            flush=True,
        )
    tokenizer = load_tokenizer(path)
    eos = sorted(eos_token_ids(path, tokenizer))

    watchers: set[asyncio.Task] = set()

    async def main() -> None:
        tracing = start_tracing("verifier", traces_endpoint(settings.server.otlp_traces_endpoint))
        service = VerifierService(
            runner,
            max_num_seqs=settings.runner.max_num_seqs,
            batch_window_s=settings.batch_window_ms / 1000,
            meter=service_meter("verifier", settings.server),
            tracing=tracing,
            max_drafts_per_step=settings.max_drafts_per_step,
            draft_ahead_rejections=settings.draft_ahead_rejections,
            draft_cuts=settings.draft_cuts,
            proposers=settings.proposers,
            speculator=speculator,
            grammars=GrammarCompiler(tokenizer, runner.vocab_size, eos),
            proposer_channels=Channels(
                channel_options(
                    settings.server.max_message_bytes,
                    settings.server.keepalive_time_ms,
                    settings.server.keepalive_timeout_ms,
                ),
                settings.client_tls,
            ),
        )
        service.cost_model = cost_model

        async def stop() -> None:
            await service.close()
            tracing.shutdown()

        async def register(server, health) -> None:
            service.start()
            pb_grpc.add_VerifierServicer_to_server(VerifierServicer(service, settings.model, eos), server)
            await set_health(health, SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
            watchers.add(asyncio.create_task(_not_serving_when_the_runner_fails(service, health)))

        await serve(
            settings.server,
            [SERVICE_NAME],
            register,
            "verifier",
            stop,
            idle=lambda: not service.sequences,
        )

    asyncio.run(main())
