"""gRPC front of the gateway: the public Generate stream, model info, and health that tracks verifiers;
`run_gateway` serves it until SIGTERM."""

from __future__ import annotations

import asyncio
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2
from opentelemetry import trace
from opentelemetry.metrics import Meter, Observation
from opentelemetry.trace import Status, StatusCode

from gateway_svc.backends import ProposerBackend, VerifierBackend
from gateway_svc.discovery import BackendPool, keep_resolving
from gateway_svc.drafter_pool import DrafterPool
from gateway_svc.generation import Delta, GatewayCore
from gateway_svc.round_plan import RoundSettings
from gateway_svc.validation import DEFAULT_LIMITS, RequestLimits, validate
from splitspec.config import MAX_PROMPT_LOOKUP, SpeculationMethod, check_prompt_lookup
from splitspec.errors import ServiceError
from splitspec.metrics import RequestMetrics, RequestTimer, service_meter
from splitspec.rpc.api_keys import ApiKeyInterceptor
from splitspec.rpc.channels import Channels
from splitspec.rpc.grpc_server import CONTRACT_VERSION, ServerOptions, channel_options, serve, set_health
from splitspec.rpc.targets import Target
from splitspec.rpc.tls import ClientFilesWatch, ClientTls
from splitspec.tracing import Tracing, start_tracing, traces_endpoint
from splitspec_protos import splitspec_v1_pb2 as pb
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Gateway"].full_name


class GatewayServicer(pb_grpc.GatewayServicer):
    def __init__(
        self,
        core: GatewayCore,
        model_name: str,
        max_concurrent_requests: int,
        tracing: Tracing | None = None,
        limits: RequestLimits = DEFAULT_LIMITS,
    ) -> None:
        self.core = core
        self.model_name = model_name
        self.max_concurrent_requests = max_concurrent_requests
        self.limits = limits
        self.active = 0
        self.tracing = tracing or Tracing()

    async def GetModelInfo(self, request, context) -> pb.ModelInfo:
        verifier = next((v for v in self.core.verifiers if v.info is not None), None)
        return pb.ModelInfo(
            model=self.model_name,
            vocab_size=verifier.info.vocab_size if verifier else 0,
            max_model_len=self.core.max_model_len,
            method=self.core.method,
            num_speculative_tokens=self.core.num_speculative_tokens,
            contract_version=CONTRACT_VERSION,
        )

    async def Generate(self, request: pb.GenerateRequest, context):
        async for response in self._generate(request, context):
            yield response

    async def GenerateUnary(self, request: pb.GenerateRequest, context) -> pb.GenerateResponse:
        total = pb.GenerateResponse(request_id=request.request_id)
        async for response in self._generate(request, context):
            total.token_ids.extend(response.token_ids)
            total.text += response.text
            if response.finish_reason:
                total.finish_reason = response.finish_reason
                total.stop_reason = response.stop_reason
                total.usage.CopyFrom(response.usage)
                total.speculation.CopyFrom(response.speculation)
        return total

    async def _generate(self, request: pb.GenerateRequest, context):
        try:
            async for response in self.responses(request, context.time_remaining()):
                yield response
        except ServiceError as exc:
            await context.abort(exc.code, exc.message)

    async def responses(
        self, request: pb.GenerateRequest, time_remaining: float | None = None
    ) -> AsyncIterator[pb.GenerateResponse]:
        """The request's responses, for the gRPC and the HTTP fronts alike. A refusal or a failure raises
        ServiceError with what the caller may hear; an unexpected error's traceback goes to the log."""
        metrics = self.core.metrics
        metrics.running.add(1)
        span = self._request_span(request)
        try:
            async for response in self._validated_generate(request, time_remaining, span):
                yield response
        except ServiceError as exc:
            metrics.failure.add(1, {"reason": exc.code.name.lower()})
            span.set_status(Status(StatusCode.ERROR, f"{exc.code.name}: {exc.message}"))
            raise
        except (asyncio.CancelledError, GeneratorExit):
            metrics.failure.add(1, {"reason": "cancelled"})
            span.set_status(Status(StatusCode.ERROR, "CANCELLED"))
            raise
        except Exception:
            # a bug: the traceback goes to the log, the client hears only that it happened
            print("splitspec gateway: unexpected error in a request:", file=sys.stderr, flush=True)
            traceback.print_exc()
            metrics.failure.add(1, {"reason": "internal"})
            span.set_status(Status(StatusCode.ERROR, "INTERNAL"))
            raise ServiceError(
                grpc.StatusCode.INTERNAL, "internal error in the gateway (its log has the details)"
            ) from None
        finally:
            metrics.running.add(-1)
            span.end()

    def _request_span(self, request: pb.GenerateRequest) -> trace.Span:
        """The request's span, a child of the gRPC server span (which continues the client's
        `traceparent`); a span that records nothing while tracing is off."""
        if not self.tracing.enabled:
            return trace.INVALID_SPAN
        sampling = request.sampling
        attributes = {
            "gen_ai.operation.name": "text_completion",
            "gen_ai.request.model": self.model_name,
            "gen_ai.request.temperature": sampling.temperature if sampling.HasField("temperature") else 1.0,
            "splitspec.method": self.core.method,
        }
        for name in ("max_tokens", "top_p", "top_k", "seed"):
            if sampling.HasField(name):
                attributes[f"gen_ai.request.{name}"] = getattr(sampling, name)
        return self.tracing.tracer.start_span(
            f"generate {self.model_name}", kind=trace.SpanKind.INTERNAL, attributes=attributes
        )

    async def _validated_generate(
        self, request: pb.GenerateRequest, time_remaining: float | None, span: trace.Span
    ) -> AsyncIterator[pb.GenerateResponse]:
        core = self.core
        if not any(v.info is not None for v in core.verifiers):
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, "no verifier is reachable; retry once one is up")
        vocab = next(v.info.vocab_size for v in core.verifiers if v.info is not None)
        valid = validate(request, core.tokenizer, vocab, core.max_model_len, core.num_speculative_tokens, self.limits)
        if self.active >= self.max_concurrent_requests:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the gateway is at {self.max_concurrent_requests} requests; retry later",
            )
        self.active += 1
        timer = RequestTimer()
        try:
            deadline = None if time_remaining is None else time.monotonic() + time_remaining
            async for delta in core.generate(
                valid.prompt,
                valid.prompt_token_ids,
                valid.params,
                valid.num_speculative_tokens,
                deadline,
                span,
                valid.session_id,
            ):
                core.metrics.tokens(timer, len(delta.token_ids))
                if delta.finish_reason is not None:
                    core.metrics.finished(timer, delta.finish_reason, delta.prompt_tokens, delta.stats)
                    if span.is_recording():
                        span.set_attributes(_outcome_attributes(delta, timer))
                yield _response(delta, request.request_id)
        finally:
            self.active -= 1


def _outcome_attributes(delta: Delta, timer: RequestTimer) -> dict:
    stats = delta.stats
    return {
        "gen_ai.usage.input_tokens": delta.prompt_tokens,
        "gen_ai.usage.output_tokens": delta.completion_tokens,
        "gen_ai.response.finish_reasons": [str(delta.finish_reason)],
        "gen_ai.server.time_to_first_token": (timer.first or timer.started) - timer.started,
        "splitspec.rounds": stats.num_rounds,
        "splitspec.drafted": stats.num_draft_tokens,
        "splitspec.accepted": stats.num_accepted_tokens,
        "splitspec.mean_tokens_per_round": stats.mean_accepted_tokens_per_round,
        "splitspec.failovers": delta.failovers,
    }


def _response(delta: Delta, request_id: str) -> pb.GenerateResponse:
    response = pb.GenerateResponse(token_ids=delta.token_ids, text=delta.text, request_id=request_id)
    response.usage.prompt_tokens = delta.prompt_tokens  # so far: every response carries it
    response.usage.completion_tokens = delta.completion_tokens
    if delta.logprobs is not None:
        response.logprobs.extend(delta.logprobs)
    if delta.prompt_logprobs is not None:
        response.prompt_logprobs.extend(delta.prompt_logprobs)
    if delta.finish_reason is not None:
        response.finish_reason = delta.finish_reason
        response.stop_reason = "" if delta.stop_reason is None else str(delta.stop_reason)
        stats = delta.stats
        response.speculation.num_rounds = stats.num_rounds
        response.speculation.num_draft_tokens = stats.num_draft_tokens
        response.speculation.num_accepted_tokens = stats.num_accepted_tokens
        response.speculation.mean_accepted_tokens_per_round = stats.mean_accepted_tokens_per_round
        response.speculation.drafted_per_position.extend(stats.drafted_per_position)
        response.speculation.accepted_per_position.extend(stats.accepted_per_position)
    return response


async def watch_backends(core: GatewayCore, health_servicer, interval_s: float = 1.0) -> None:
    """Health is SERVING only while some verifier answers; learn the model's limits from it. Proposers
    that stop answering or start draining get no more drafts to make."""
    while True:
        infos, _ = await asyncio.gather(
            asyncio.gather(*(v.refresh_info() for v in core.verifiers)),
            asyncio.gather(*(p.refresh_health() for p in core.proposers)),
        )
        core.drafters.admit(core.proposers)
        core.drafters.admit_verifiers(core.verifiers)
        live = [i for i in infos if i is not None]
        if live:
            core.max_model_len = min(i.max_model_len for i in live)
            core.eos_token_ids = set(live[0].eos_token_ids)
        status = health_pb2.HealthCheckResponse.SERVING if live else health_pb2.HealthCheckResponse.NOT_SERVING
        await set_health(health_servicer, SERVICE_NAME, status)
        await asyncio.sleep(interval_s)


def observe_verifier_load(meter: Meter, verifiers: list[VerifierBackend]) -> None:
    """splitspec_verifier_reported_sequences{verifier}: the sequences each serving verifier reported at
    this gateway's last check of it (every gateway's, the load placement weighs); none while it is not
    serving. Shows which verifiers a gateway can place on, and what it believes they hold."""
    meter.create_observable_gauge(
        "splitspec_verifier_reported_sequences",
        [
            lambda _: [
                Observation(v.info.num_sequences, {"verifier": v.address})
                for v in list(verifiers)
                if v.info is not None
            ]
        ],
        description="Sequences each serving verifier reported at the last check",
    )


@dataclass(frozen=True)
class GatewaySettings:
    server: ServerOptions
    model: str = "default"
    verifiers: tuple[Target, ...] = (Target("127.0.0.1", 50052, resolve=False),)
    proposers: tuple[Target, ...] = field(default=(Target("127.0.0.1", 50053, resolve=False),))
    resolve_interval_s: float = 5.0
    """How often dns:/// targets are resolved again, and the client TLS files checked for a change."""
    method: str | None = None
    """The drafter the proposers must report (others are refused); None: whichever they report."""
    num_speculative_tokens: int | None = None
    """None: the proposers' own default K."""
    max_concurrent_requests: int = 256
    max_tokens_limit: int | None = None
    """The most max_tokens a request may ask for; None: any, the model's context bounds it."""
    http_port: int | None = None
    """Where the OpenAI-compatible HTTP API is served (gateway_svc.openai_http); None: not at all."""
    served_model_name: str | None = None
    """The model name HTTP clients use; None: `model` as given."""
    proposer_timeout_s: float = 5.0
    verifier_wait_s: float = 30.0
    prefix_routing: bool = True
    """A sequence starts on the verifier most likely to cache its prompt's beginning, within load bounds
    (gateway_svc.prefix_routing); off: on the least loaded."""
    adaptive: bool = True
    local_ngram: bool = True
    """With method ngram: the verifiers draft by n-gram lookup themselves; no round waits for a proposer."""
    verifier_ngram: bool = True
    """With a proposer method that reads no hidden states (draft_model): the verifiers also draft
    n-grams, and each request's rounds are drafted where they are measured to yield more
    (gateway_svc.drafter_choice)."""
    prompt_lookup: tuple[int, int] = (1, 4)
    """(min, max) n-gram sizes of those drafts."""
    tree_width: int = 1
    """The verifiers' n-gram drafts are trees with at most this many branches per token (1: chains)."""
    draft_ahead: bool = True
    """Proposers draft the next round while the verifier checks this one (gateway_svc.draft_ahead)."""
    pipeline_steps: bool = True
    """Rounds that need no proposer keep several steps in flight (VerifyStep.pipelined)."""
    direct_drafts: bool = False
    """The verifiers ask the proposers for drafts themselves (GatewayCore.direct_drafts)."""
    api_keys: tuple[str, ...] = ()
    """With any, every call but health checks must carry one (splitspec.rpc.api_keys)."""
    client_tls: ClientTls | None = None
    """How it calls its verifiers and proposers over TLS; None: plaintext."""


def run_gateway(settings: GatewaySettings) -> None:
    from gateway_svc.openai_http import HttpServer, OpenAIFront
    from splitspec.checkpoint import resolve_checkpoint
    from splitspec.tokenizer import load_tokenizer

    if settings.local_ngram or settings.verifier_ngram:
        check_prompt_lookup(*settings.prompt_lookup, MAX_PROMPT_LOOKUP)
    rounds = RoundSettings(
        num_speculative_tokens=settings.num_speculative_tokens,
        adaptive=settings.adaptive,
        local_ngram=settings.local_ngram,
        verifier_ngram=settings.verifier_ngram,
        prompt_lookup=settings.prompt_lookup,
        tree_width=settings.tree_width,
        draft_ahead=settings.draft_ahead,
        pipeline_steps=settings.pipeline_steps,
        direct_drafts=settings.direct_drafts,
        ngram_without_proposers=settings.method == SpeculationMethod.NGRAM
        or (settings.method is None and not settings.proposers),
    )
    tokenizer = load_tokenizer(resolve_checkpoint(settings.model))

    async def main() -> None:
        options = channel_options(
            settings.server.max_message_bytes, settings.server.keepalive_time_ms, settings.server.keepalive_timeout_ms
        )
        channels = Channels(options, settings.client_tls)
        verifiers: list[VerifierBackend] = []
        proposers: list[ProposerBackend] = []
        pools = [
            BackendPool(settings.verifiers, lambda a, name: VerifierBackend(a, channels, name), verifiers, "verifier"),
            BackendPool(settings.proposers, lambda a, name: ProposerBackend(a, channels, name), proposers, "proposer"),
        ]
        for pool in pools:
            await pool.refresh()
        drafters = DrafterPool(settings.method)
        drafters.admit(proposers)
        drafters.admit_verifiers(verifiers)
        meter = service_meter("gateway", settings.server)
        core = GatewayCore(
            verifiers=verifiers,
            proposers=proposers,
            tokenizer=tokenizer,
            eos_token_ids=set(),
            max_model_len=1 << 30,
            proposer_timeout_s=settings.proposer_timeout_s,
            verifier_wait_s=settings.verifier_wait_s,
            prefix_routing=settings.prefix_routing,
            rounds=rounds,
            drafters=drafters,
            metrics=RequestMetrics(meter),
        )
        observe_verifier_load(meter, verifiers)
        tasks: list[asyncio.Task] = []
        http: list[HttpServer] = []
        tracing = start_tracing("gateway", traces_endpoint(settings.server.otlp_traces_endpoint))

        async def register(server, health) -> None:
            servicer = GatewayServicer(
                core,
                settings.model,
                settings.max_concurrent_requests,
                tracing,
                RequestLimits(max_tokens=settings.max_tokens_limit),
            )
            pb_grpc.add_GatewayServicer_to_server(servicer, server)
            if settings.http_port is not None:
                front = OpenAIFront(
                    servicer,
                    settings.served_model_name or settings.model,
                    serving=lambda: any(v.info is not None for v in core.verifiers),
                    api_keys=list(settings.api_keys),
                    metrics=settings.server.metrics_port is not None,
                )
                tls = settings.server.tls
                http.append(
                    HttpServer(
                        front,
                        settings.server.host,
                        settings.http_port,
                        tls.cert_file if tls else None,
                        tls.key_file if tls else None,
                    )
                )
                await http[0].start()
            loop = asyncio.get_running_loop()
            tasks.append(loop.create_task(watch_backends(core, health)))
            client_files = ClientFilesWatch(settings.client_tls) if settings.client_tls else None
            renewed = client_files.renewed if client_files else lambda: False
            tasks.append(loop.create_task(keep_resolving(pools, settings.resolve_interval_s, renewed)))

        async def stop() -> None:
            for server in http:
                await server.stop()
            for task in tasks:
                task.cancel()
            for backend in verifiers + proposers:
                await backend.close()
            tracing.shutdown()

        await serve(
            settings.server,
            [SERVICE_NAME],
            register,
            "gateway",
            stop,
            interceptors=([ApiKeyInterceptor(list(settings.api_keys))] if settings.api_keys else [])
            + tracing.server_interceptors(),
        )

    asyncio.run(main())
