"""Start each service from its frozen settings: load what it needs, then serve until SIGTERM."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from splitspec.compute_thread import run_on_compute_thread
from splitspec.config import DEFAULT_NUM_SPECULATIVE_TOKENS, HIDDEN_STATES_BY_METHOD, HIDDEN_STATES_NONE
from splitspec.grpc_server import ServerOptions, serve


@dataclass(frozen=True)
class VerifierSettings:
    server: ServerOptions
    model: str = "default"
    max_num_seqs: int = 64
    kv_cache_memory_bytes: int = 1 << 30
    max_model_len: int | None = None
    batch_window_ms: float = 2.0


@dataclass(frozen=True)
class ProposerSettings:
    server: ServerOptions
    method: str = "ngram"
    num_speculative_tokens: int = DEFAULT_NUM_SPECULATIVE_TOKENS
    draft_model: str | None = None
    prompt_lookup_max: int = 4
    prompt_lookup_min: int = 1
    draft_top_k: int = 16
    target_vocab_size: int | None = None
    target_model: str | None = None
    """The target checkpoint, for drafters that use its output head (eagle)."""
    batch_window_ms: float = 1.0


@dataclass(frozen=True)
class GatewaySettings:
    server: ServerOptions
    model: str = "default"
    verifiers: tuple[str, ...] = ("127.0.0.1:50052",)
    proposers: tuple[str, ...] = field(default=("127.0.0.1:50053",))
    method: str = "ngram"
    num_speculative_tokens: int = DEFAULT_NUM_SPECULATIVE_TOKENS
    max_concurrent_requests: int = 256
    proposer_timeout_s: float = 5.0
    adaptive: bool = True


def run_verifier(settings: VerifierSettings) -> None:
    from protos import splitspec_v1_pb2 as pb
    from protos import splitspec_v1_pb2_grpc as pb_grpc
    from splitspec.adaptive_k import PassCostModel
    from splitspec.checkpoint import resolve_checkpoint
    from splitspec.models.loader import load_runner
    from splitspec.models.runner import ModelRunner
    from splitspec.tokenizer import eos_token_ids, load_tokenizer
    from verifier_svc.server import VerifierServicer
    from verifier_svc.service import VerifierService

    path = resolve_checkpoint(settings.model)

    def load() -> tuple[ModelRunner, PassCostModel | None]:
        runner = load_runner(
            path,
            kv_cache_memory_bytes=settings.kv_cache_memory_bytes,
            max_model_len=settings.max_model_len,
            max_num_seqs=settings.max_num_seqs,
        )
        return runner, PassCostModel.calibrate(runner, max_rows=128)

    runner, cost_model = run_on_compute_thread(load)
    eos = sorted(eos_token_ids(path, load_tokenizer(path)))

    async def main() -> None:
        service = VerifierService(runner, max_num_seqs=settings.max_num_seqs, batch_window_s=settings.batch_window_ms / 1000)
        service.cost_model = cost_model

        async def register(server, health) -> None:
            service.start()
            pb_grpc.add_VerifierServicer_to_server(VerifierServicer(service, settings.model, eos), server)
            await health.set("", 1)
            await health.set("splitspec.v1.Verifier", 1)

        await serve(settings.server, [pb.DESCRIPTOR.services_by_name["Verifier"].full_name], register, "verifier", service.close)

    asyncio.run(main())


def run_proposer(settings: ProposerSettings) -> None:
    from proposer_svc.server import ProposerServicer
    from proposer_svc.service import ProposerService
    from protos import splitspec_v1_pb2 as pb
    from protos import splitspec_v1_pb2_grpc as pb_grpc

    proposer = run_on_compute_thread(_build_proposer, settings)

    async def main() -> None:
        service = ProposerService(
            proposer,
            method=settings.method,
            num_speculative_tokens=settings.num_speculative_tokens,
            batch_window_s=settings.batch_window_ms / 1000,
        )

        async def register(server, health) -> None:
            service.start()
            pb_grpc.add_ProposerServicer_to_server(ProposerServicer(service), server)
            await health.set("", 1)
            await health.set("splitspec.v1.Proposer", 1)

        await serve(settings.server, [pb.DESCRIPTOR.services_by_name["Proposer"].full_name], register, "proposer", service.close)

    asyncio.run(main())


def _build_proposer(settings: ProposerSettings):
    from proposer_svc.factory import build_proposer
    from splitspec.config import SpeculativeConfig

    spec = SpeculativeConfig(
        method=settings.method,
        num_speculative_tokens=settings.num_speculative_tokens,
        prompt_lookup_max=settings.prompt_lookup_max,
        prompt_lookup_min=settings.prompt_lookup_min,
        draft_model=settings.draft_model,
        draft_top_k=settings.draft_top_k,
    )
    return build_proposer(spec, target_vocab_size=settings.target_vocab_size, target_model=settings.target_model)


def run_gateway(settings: GatewaySettings) -> None:
    from gateway.generation import GatewayCore
    from gateway.server import GatewayServicer, make_backends, watch_verifiers
    from protos import splitspec_v1_pb2 as pb
    from protos import splitspec_v1_pb2_grpc as pb_grpc
    from splitspec.checkpoint import resolve_checkpoint
    from splitspec.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(resolve_checkpoint(settings.model))

    async def main() -> None:
        verifiers, proposers = make_backends(list(settings.verifiers), list(settings.proposers), settings.server.max_message_bytes)
        core = GatewayCore(
            verifiers=verifiers,
            proposers=proposers,
            tokenizer=tokenizer,
            eos_token_ids=set(),
            max_model_len=1 << 30,
            num_speculative_tokens=settings.num_speculative_tokens if proposers else 0,
            proposer_timeout_s=settings.proposer_timeout_s,
            adaptive=settings.adaptive,
            drafts_are_sampled=settings.method == "draft_model",
            hidden_states=HIDDEN_STATES_BY_METHOD.get(settings.method, HIDDEN_STATES_NONE),
        )
        watcher: asyncio.Task | None = None

        async def register(server, health) -> None:
            nonlocal watcher
            servicer = GatewayServicer(core, settings.model, settings.method, settings.max_concurrent_requests)
            pb_grpc.add_GatewayServicer_to_server(servicer, server)
            watcher = asyncio.get_running_loop().create_task(watch_verifiers(core, health))

        async def stop() -> None:
            if watcher is not None:
                watcher.cancel()
            for backend in verifiers + proposers:
                await backend.close()

        await serve(settings.server, [pb.DESCRIPTOR.services_by_name["Gateway"].full_name], register, "gateway", stop)

    asyncio.run(main())
