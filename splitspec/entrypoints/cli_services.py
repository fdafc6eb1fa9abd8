"""`splitspec serve-verifier | serve-proposer | serve-gateway | up`: flags, with environment defaults."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from splitspec.config import (
    DEFAULT_NUM_SPECULATIVE_TOKENS,
    METHODS_WITHOUT_MODEL,
    SPECULATION_METHODS,
    RunnerConfig,
    SpeculativeConfig,
)
from splitspec.devices import resolve_device
from splitspec.draft_limits import DEFAULT_AHEAD_REJECTIONS, MAX_DRAFTS_PER_STEP
from splitspec.entrypoints.cli_flags import (
    add_device_flag,
    add_enforce_eager_flag,
    add_suffix_flags,
    add_tensor_parallel_flag,
    env_default,
    suffix_flag_args,
    suffix_settings_from,
)
from splitspec.errors import SplitspecError
from splitspec.netdelay import DelayProxy
from splitspec.rpc.grpc_server import ServerOptions
from splitspec.rpc.targets import Target, parse_targets
from splitspec.rpc.throwaway_certs import StackCertificates, make_stack_certificates
from splitspec.rpc.tls import ClientTls, ServerTls


def _server_flags(p: argparse.ArgumentParser, default_port: int) -> None:
    p.add_argument("--host", default=env_default("HOST", "127.0.0.1"), help="address to listen on (env SPLITSPEC_HOST)")
    p.add_argument("--port", type=int, default=env_default("PORT", default_port), help="port (env SPLITSPEC_PORT)")
    p.add_argument("--max-message-bytes", type=int, default=env_default("MAX_MESSAGE_BYTES", 64 << 20))
    p.add_argument("--keepalive-time-ms", type=int, default=env_default("KEEPALIVE_TIME_MS", 20_000))
    p.add_argument("--keepalive-timeout-ms", type=int, default=env_default("KEEPALIVE_TIMEOUT_MS", 10_000))
    p.add_argument(
        "--grace-seconds", type=float, default=env_default("GRACE_SECONDS", 10.0), help="drain time on SIGTERM"
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=env_default("METRICS_PORT", None),
        help="serve Prometheus metrics at http://HOST:PORT/metrics (env SPLITSPEC_METRICS_PORT; default: none)",
    )
    p.add_argument(
        "--otlp-traces-endpoint",
        default=None,
        help="send OpenTelemetry traces by OTLP to this endpoint (default: the OTEL_EXPORTER_OTLP_TRACES_ENDPOINT "
        "or OTEL_EXPORTER_OTLP_ENDPOINT environment; off when neither is set)",
    )
    p.add_argument(
        "--tls-cert-file",
        default=env_default("TLS_CERT_FILE", None),
        help="serve TLS with this PEM certificate (chain), re-read when the file changes (env SPLITSPEC_TLS_CERT_FILE)",
    )
    p.add_argument(
        "--tls-key-file", default=env_default("TLS_KEY_FILE", None), help="its private key (env SPLITSPEC_TLS_KEY_FILE)"
    )
    p.add_argument(
        "--health-port",
        type=int,
        default=env_default("HEALTH_PORT", None),
        help="also answer gRPC health checks, and nothing else, in plaintext on this port: for probes that cannot "
        "present a client certificate (env SPLITSPEC_HEALTH_PORT)",
    )


def _peer_ca_flag(p: argparse.ArgumentParser, use: str) -> None:
    p.add_argument("--tls-ca-file", default=env_default("TLS_CA_FILE", None), help=f"{use} (env SPLITSPEC_TLS_CA_FILE)")


def _yield_idle_cores() -> None:
    """Service processes share the cores. By default OpenMP threads spin for a long while after each
    op, taking CPU that the gateway and proposer need between verify passes; never spinning
    (OMP_WAIT_POLICY=PASSIVE) makes each of a pass's hundred-odd parallel ops wake sleeping threads,
    about 10 ms more per pass (docs/benchmarks.md). A short spin (libgomp's GOMP_SPINCOUNT=10000)
    keeps the threads awake within a pass and asleep between passes. Must run before torch loads; a
    user's own setting wins."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "10000")


def _server_tls(args: argparse.Namespace, client_ca: bool) -> ServerTls | None:
    """The server's TLS from the flags, its files checked now; client_ca: --tls-ca-file is the CA the
    server's clients must present certificates from (mutual TLS)."""
    if args.tls_cert_file is None and args.tls_key_file is None:
        if client_ca and args.tls_ca_file is not None:
            raise SplitspecError("--tls-ca-file (mutual TLS) needs --tls-cert-file and --tls-key-file")
        return None
    if args.tls_cert_file is None:
        raise SplitspecError("--tls-key-file needs --tls-cert-file")
    tls = ServerTls(args.tls_cert_file, args.tls_key_file, args.tls_ca_file if client_ca else None)
    tls.check()
    return tls


def _server_options(args: argparse.Namespace, client_ca: bool = True) -> ServerOptions:
    return ServerOptions(
        tls=_server_tls(args, client_ca),
        health_port=args.health_port,
        host=args.host,
        port=args.port,
        max_message_bytes=args.max_message_bytes,
        keepalive_time_ms=args.keepalive_time_ms,
        keepalive_timeout_ms=args.keepalive_timeout_ms,
        grace_seconds=args.grace_seconds,
        metrics_port=args.metrics_port,
        otlp_traces_endpoint=args.otlp_traces_endpoint,
    )


def _client_certificate_flags(p: argparse.ArgumentParser, who: str) -> None:
    p.add_argument(
        "--tls-client-cert-file",
        default=env_default("TLS_CLIENT_CERT_FILE", None),
        help=f"the certificate {who} that require one; by default --tls-cert-file (env SPLITSPEC_TLS_CLIENT_CERT_FILE)",
    )
    p.add_argument(
        "--tls-client-key-file",
        default=env_default("TLS_CLIENT_KEY_FILE", None),
        help="its private key (env SPLITSPEC_TLS_CLIENT_KEY_FILE)",
    )


def _max_drafts_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--max-drafts-per-step",
        type=_positive_int,
        default=env_default("MAX_DRAFTS_PER_STEP", MAX_DRAFTS_PER_STEP),
        help=f"{what}; more is refused with INVALID_ARGUMENT (env SPLITSPEC_MAX_DRAFTS_PER_STEP)",
    )


def _draft_ahead_rejections_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--draft-ahead-rejections",
        type=_non_negative_int,
        default=env_default("DRAFT_AHEAD_REJECTIONS", DEFAULT_AHEAD_REJECTIONS),
        help="with direct drafts (gateway --direct-drafts), the verifier also drafts ahead for the outcomes "
        "where one of a step's first N drafts is rejected, besides the one where all are accepted; 0: only "
        "that one (env SPLITSPEC_DRAFT_AHEAD_REJECTIONS)",
    )


def _non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _targets(text: str) -> tuple[Target, ...]:
    """An argparse type: comma-separated host:port and dns:///name:port entries."""
    try:
        return parse_targets(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_service_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve-verifier", help="serve the target model (Verifier service)")
    _server_flags(p, 50052)
    p.add_argument("--model", default=env_default("MODEL", "default"), help="target checkpoint (env SPLITSPEC_MODEL)")
    p.add_argument("--max-num-seqs", type=int, default=env_default("MAX_NUM_SEQS", 64))
    p.add_argument(
        "--kv-cache-memory-bytes",
        type=int,
        default=env_default("KV_CACHE_MEMORY_BYTES", None),
        help="KV cache size; default: what --gpu-memory-utilization leaves on CUDA, 1 GiB on the CPU "
        "(env SPLITSPEC_KV_CACHE_MEMORY_BYTES)",
    )
    p.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=env_default("GPU_MEMORY_UTILIZATION", 0.9),
        help="fraction of the GPU the target may use in all (env SPLITSPEC_GPU_MEMORY_UTILIZATION)",
    )
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--batch-window-ms", type=float, default=env_default("BATCH_WINDOW_MS", 2.0))
    _max_drafts_flag(p, "the most drafts one step may carry, or ask the verifier to make")
    _draft_ahead_rejections_flag(p)
    p.add_argument(
        "--proposers",
        type=_targets,
        default=env_default("PROPOSERS", ""),
        help="the only proposers remote drafts (gateway --direct-drafts) may make this verifier call: "
        "comma-separated host:port entries, and dns:///name:port for every address the name resolves to, as "
        "the gateway's --proposers; a step naming any other is refused with PERMISSION_DENIED. Default: none, "
        "every remote draft is refused (env SPLITSPEC_PROPOSERS)",
    )
    _peer_ca_flag(
        p,
        "require clients (the gateways) to present a certificate signed by this CA: mutual TLS; and call "
        "proposers for remote drafts (gateway --direct-drafts) over TLS, checking theirs against it",
    )
    _client_certificate_flags(p, "the verifier presents to proposers it asks for drafts (gateway --direct-drafts)")
    add_device_flag(p, "the target")
    add_tensor_parallel_flag(p)
    add_enforce_eager_flag(p)
    p.set_defaults(func=_serve_verifier)

    p = sub.add_parser("serve-proposer", help="serve a drafter (Proposer service)")
    _server_flags(p, 50053)
    _proposer_flags(p)
    p.add_argument(
        "--target-model",
        default=env_default("TARGET_MODEL", None),
        help="the verifier's checkpoint, for --method eagle (env SPLITSPEC_TARGET_MODEL)",
    )
    p.add_argument("--batch-window-ms", type=float, default=env_default("BATCH_WINDOW_MS", 1.0))
    _max_drafts_flag(p, "the most drafts one call may ask for")
    _peer_ca_flag(p, "require clients (the gateways) to present a certificate signed by this CA: mutual TLS")
    add_device_flag(p, "the drafter (draft_model, mlp_speculator, eagle)")
    p.set_defaults(func=_serve_proposer)

    p = sub.add_parser("serve-gateway", help="serve the public Gateway service")
    _server_flags(p, 50051)
    p.add_argument(
        "--model",
        default=env_default("MODEL", "default"),
        help="checkpoint whose tokenizer to use (env SPLITSPEC_MODEL)",
    )
    p.add_argument(
        "--verifiers",
        type=_targets,
        default=env_default("VERIFIERS", "127.0.0.1:50052"),
        help="comma-separated verifier addresses: host:port, or dns:///name:port for every address the name "
        "resolves to, re-resolved every --resolve-interval-s (env SPLITSPEC_VERIFIERS)",
    )
    p.add_argument(
        "--proposers",
        type=_targets,
        default=env_default("PROPOSERS", "127.0.0.1:50053"),
        help="comma-separated proposer addresses, as --verifiers ('' for none; env SPLITSPEC_PROPOSERS)",
    )
    p.add_argument(
        "--resolve-interval-s",
        type=float,
        default=env_default("RESOLVE_INTERVAL_S", 5.0),
        help="how often dns:/// names are resolved again (new addresses join, vanished ones are drained) "
        "and the client TLS files are checked for a renewal (env SPLITSPEC_RESOLVE_INTERVAL_S)",
    )
    p.add_argument("--method", default=env_default("METHOD", "ngram"), help="the proposers' method, for model info")
    p.add_argument(
        "--num-speculative-tokens",
        "-k",
        type=int,
        default=env_default("NUM_SPECULATIVE_TOKENS", DEFAULT_NUM_SPECULATIVE_TOKENS),
    )
    p.add_argument("--max-concurrent-requests", type=int, default=env_default("MAX_CONCURRENT_REQUESTS", 256))
    p.add_argument(
        "--max-tokens-limit",
        type=int,
        default=env_default("MAX_TOKENS_LIMIT", None),
        help="refuse requests whose max_tokens is above this (INVALID_ARGUMENT; env SPLITSPEC_MAX_TOKENS_LIMIT); "
        "by default only the model's context bounds them",
    )
    p.add_argument(
        "--http-port",
        type=int,
        default=env_default("HTTP_PORT", None),
        help="also serve the OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models, "
        "/health, /metrics) on this port of --host (env SPLITSPEC_HTTP_PORT)",
    )
    p.add_argument(
        "--served-model-name",
        default=env_default("SERVED_MODEL_NAME", None),
        help="the model name HTTP clients send and /v1/models lists (default: --model as given; "
        "env SPLITSPEC_SERVED_MODEL_NAME)",
    )
    p.add_argument("--proposer-timeout-s", type=float, default=env_default("PROPOSER_TIMEOUT_S", 5.0))
    p.add_argument(
        "--verifier-wait-s",
        type=float,
        default=env_default("VERIFIER_WAIT_S", 30.0),
        help="how long a request whose verifier failed waits for another (or its deadline, if sooner) "
        "before UNAVAILABLE (env SPLITSPEC_VERIFIER_WAIT_S)",
    )
    p.add_argument("--fixed-k", action="store_true", help="always draft -k tokens (no adaptive draft length)")
    p.add_argument("--prompt-lookup-max", type=int, default=env_default("PROMPT_LOOKUP_MAX", 4))
    p.add_argument("--prompt-lookup-min", type=int, default=env_default("PROMPT_LOOKUP_MIN", 1))
    _round_trip_flags(p)
    _api_key_flags(p)
    _peer_ca_flag(
        p,
        "call the verifiers and proposers over TLS, checking their certificates against this CA, and present "
        "--tls-client-cert-file (by default --tls-cert-file) to them",
    )
    _client_certificate_flags(p, "the gateway presents to verifiers and proposers")
    p.set_defaults(func=_serve_gateway)

    p = sub.add_parser("up", help="start verifier, proposer and gateway locally as separate processes")
    p.add_argument("--model", default=env_default("MODEL", "default"))
    p.add_argument("--port", type=int, default=50051, help="gateway port")
    p.add_argument("--verifier-port", type=int, default=50052)
    p.add_argument(
        "--http-port",
        type=int,
        default=env_default("HTTP_PORT", None),
        help="the gateway also serves the OpenAI-compatible HTTP API on this port (env SPLITSPEC_HTTP_PORT)",
    )
    p.add_argument("--proposer-port", type=int, default=50053)
    p.add_argument("--host", default="127.0.0.1")
    _proposer_flags(p)
    add_device_flag(p, "the verifier's target")
    p.add_argument("--proposer-device", help="where the proposer's drafter runs (default: --device)")
    add_tensor_parallel_flag(p)
    add_enforce_eager_flag(p)
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="Prometheus metrics: the gateway's on this port, the verifier's on the next, the proposer's on the one after",
    )
    p.add_argument(
        "--network-delay-ms",
        type=float,
        default=0.0,
        help="delay every byte between the services by this one-way latency (a TCP proxy on each link), to see "
        "how the stack fares when its pods are apart",
    )
    p.add_argument(
        "--tls-dir",
        default=None,
        help="mutual TLS between the services and TLS to the gateway, with a throwaway CA kept in this directory "
        "(ca.pem, for clients to trust) and certificates made at each start; not for production",
    )
    _round_trip_flags(p)
    _draft_ahead_rejections_flag(p)
    _api_key_flags(p)
    p.set_defaults(func=_up)


def _api_key_flags(p: argparse.ArgumentParser) -> None:
    """Keys the gateway asks of every call but health checks (serve-gateway, and up, which passes them on)."""
    p.add_argument(
        "--api-key",
        action="append",
        default=None,
        help="require 'authorization: Bearer KEY' on every call but health checks (UNAUTHENTICATED otherwise); "
        "repeatable; env SPLITSPEC_API_KEY, comma-separated for several",
    )
    p.add_argument("--api-key-file", default=None, help="more keys, one per line ('#' starts a comment line)")


def _api_keys(args: argparse.Namespace) -> list[str]:
    """The keys from --api-key (or SPLITSPEC_API_KEY when none is given) and --api-key-file."""
    from splitspec.rpc.api_keys import read_api_keys

    given = args.api_key if args.api_key is not None else [os.environ.get("SPLITSPEC_API_KEY", "")]
    return read_api_keys(given, args.api_key_file)


def _round_trip_flags(p: argparse.ArgumentParser) -> None:
    """How the gateway's rounds reach the proposers (serve-gateway, and up, which passes them on)."""
    p.add_argument(
        "--ngram-on-proposers",
        action="store_true",
        help="with --method ngram, ask the proposers for drafts; by default the verifiers draft the n-grams "
        "themselves, which saves each round the trip to a proposer",
    )
    p.add_argument(
        "--no-verifier-ngram",
        dest="verifier_ngram",
        action="store_false",
        help="with --method draft_model, draft on the proposers only; by default the verifiers also draft "
        "n-grams, and each greedy request's rounds are drafted where the gateway measures more tokens per "
        "second, on its verifier (no trip to a proposer) or on its proposer",
    )
    p.add_argument(
        "--no-draft-ahead",
        dest="draft_ahead",
        action="store_false",
        help="do not ask the proposer for the next round's draft while the verifier checks this one (by default "
        "it drafts ahead for the round's likeliest outcome, and a round whose outcome matches needs no trip to "
        "the proposer after the verifier's answer)",
    )
    p.add_argument(
        "--no-pipeline",
        dest="pipeline",
        action="store_false",
        help="send each round's step only after the last one's result (by default rounds that need no proposer, "
        "n-grams drafted on the verifier or K=0, keep several steps in flight, which the verifier runs back to "
        "back, so no round waits for the link to the gateway)",
    )
    p.add_argument(
        "--direct-drafts",
        action="store_true",
        help="have the verifiers ask the proposers for each round's draft themselves, right before the round "
        "runs: a round crosses the verifier's link to the proposer instead of the gateway's two, hidden states "
        "go straight from verifier to proposer, and rounds of every drafter keep several steps in flight. "
        "The verifiers must reach the proposers at the addresses the gateway uses, and call only those their "
        "serve-verifier --proposers lists (up gives them the gateway's)",
    )


def _proposer_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=list(SPECULATION_METHODS), default=env_default("METHOD", "ngram"))
    p.add_argument(
        "--num-speculative-tokens",
        "-k",
        type=int,
        default=env_default("NUM_SPECULATIVE_TOKENS", DEFAULT_NUM_SPECULATIVE_TOKENS),
    )
    p.add_argument(
        "--draft-model",
        default=env_default("DRAFT_MODEL", None),
        help="draft, speculator or EAGLE checkpoint (all methods but ngram and suffix)",
    )
    p.add_argument("--prompt-lookup-max", type=int, default=4)
    p.add_argument("--prompt-lookup-min", type=int, default=1)
    p.add_argument("--draft-top-k", type=int, default=16)
    add_suffix_flags(p)


def _serve_verifier(args: argparse.Namespace) -> int:
    _yield_idle_cores()
    resolve_device(args.device)
    from verifier_svc.server import VerifierSettings, run_verifier

    run_verifier(
        VerifierSettings(
            server=_server_options(args),
            model=args.model,
            runner=RunnerConfig(
                kv_cache_memory_bytes=args.kv_cache_memory_bytes,
                gpu_memory_utilization=args.gpu_memory_utilization,
                max_model_len=args.max_model_len,
                max_num_seqs=args.max_num_seqs,
                device=args.device,
                tensor_parallel_size=args.tensor_parallel_size,
                enforce_eager=args.enforce_eager,
            ),
            batch_window_ms=args.batch_window_ms,
            max_drafts_per_step=args.max_drafts_per_step,
            draft_ahead_rejections=args.draft_ahead_rejections,
            client_tls=_client_tls(args),
            proposers=args.proposers,
        )
    )
    return 0


def _serve_proposer(args: argparse.Namespace) -> int:
    _yield_idle_cores()
    from proposer_svc.server import ProposerSettings, run_proposer

    if args.method not in METHODS_WITHOUT_MODEL and not args.draft_model:
        raise SplitspecError(f"--method {args.method} needs --draft-model DIR")
    resolve_device(args.device)
    if args.method == "eagle" and not args.target_model:
        raise SplitspecError(
            "--method eagle needs --target-model (the verifier's model), whose output head it drafts with"
        )
    run_proposer(
        ProposerSettings(
            server=_server_options(args),
            speculative=SpeculativeConfig(
                method=args.method,
                num_speculative_tokens=args.num_speculative_tokens,
                prompt_lookup_max=args.prompt_lookup_max,
                prompt_lookup_min=args.prompt_lookup_min,
                draft_model=args.draft_model,
                draft_top_k=args.draft_top_k,
                suffix=suffix_settings_from(args),
            ),
            target_model=args.target_model,
            device=args.device,
            batch_window_ms=args.batch_window_ms,
            max_drafts_per_step=args.max_drafts_per_step,
        )
    )
    return 0


def _client_tls(args: argparse.Namespace) -> ClientTls | None:
    """How a service calls other pods: over TLS when given a CA, with a client certificate when it has one."""
    client_cert = args.tls_client_cert_file
    client_key = args.tls_client_key_file
    if client_cert is None and client_key is None:
        client_cert, client_key = args.tls_cert_file, args.tls_key_file
    if args.tls_ca_file is None:
        if args.tls_client_cert_file or args.tls_client_key_file:
            raise SplitspecError("--tls-client-cert-file needs --tls-ca-file, to check the pods it is shown to")
        return None
    if client_key is not None and client_cert is None:
        raise SplitspecError("--tls-client-key-file needs --tls-client-cert-file")
    tls = ClientTls(args.tls_ca_file, client_cert, client_key)
    tls.credentials()  # the files checked now, not at the first call
    return tls


def _serve_gateway(args: argparse.Namespace) -> int:
    if args.max_tokens_limit is not None and args.max_tokens_limit < 1:
        raise SplitspecError(f"--max-tokens-limit must be at least 1, got {args.max_tokens_limit}")
    if args.http_port is not None and not 0 < args.http_port < 65536:
        raise SplitspecError(f"--http-port must be a port number, got {args.http_port}")
    api_keys = _api_keys(args)
    server = _server_options(args, client_ca=False)
    client_tls = _client_tls(args)
    _yield_idle_cores()
    from gateway_svc.server import GatewaySettings, run_gateway

    run_gateway(
        GatewaySettings(
            server=server,
            client_tls=client_tls,
            model=args.model,
            verifiers=args.verifiers,
            proposers=args.proposers,
            resolve_interval_s=args.resolve_interval_s,
            method=args.method,
            num_speculative_tokens=args.num_speculative_tokens,
            max_concurrent_requests=args.max_concurrent_requests,
            max_tokens_limit=args.max_tokens_limit,
            http_port=args.http_port,
            served_model_name=args.served_model_name,
            proposer_timeout_s=args.proposer_timeout_s,
            verifier_wait_s=args.verifier_wait_s,
            adaptive=not args.fixed_k,
            local_ngram=not args.ngram_on_proposers,
            verifier_ngram=args.verifier_ngram,
            api_keys=tuple(api_keys),
            draft_ahead=args.draft_ahead,
            pipeline_steps=args.pipeline,
            direct_drafts=args.direct_drafts,
            prompt_lookup=(args.prompt_lookup_min, args.prompt_lookup_max),
        )
    )
    return 0


def up_commands(
    args: argparse.Namespace, links: dict[str, str] | None = None, certs: StackCertificates | None = None
) -> dict[str, list[str]]:
    """The three processes `splitspec up` starts (docker-compose.yml mirrors these). links: the address
    the gateway reaches "verifier" and "proposer" at, when not their own (a delaying proxy). certs: for
    TLS everywhere, mutual between the services (--tls-dir)."""
    links = links or {}
    base = [sys.executable, "-m", "splitspec"]
    proposer = [
        "serve-proposer",
        "--host",
        args.host,
        "--port",
        str(args.proposer_port),
        "--method",
        args.method,
        "-k",
        str(args.num_speculative_tokens),
    ]
    proposer += [
        "--prompt-lookup-max",
        str(args.prompt_lookup_max),
        "--prompt-lookup-min",
        str(args.prompt_lookup_min),
        "--draft-top-k",
        str(args.draft_top_k),
        *suffix_flag_args(args),
    ]
    if args.draft_model:
        proposer += ["--draft-model", args.draft_model]
    if args.method == "eagle":
        proposer += ["--target-model", args.model]
    proposer += ["--device", args.proposer_device or args.device]
    proposers = links.get("proposer", f"{args.host}:{args.proposer_port}")
    verifier = ["serve-verifier", "--host", args.host, "--port", str(args.verifier_port), "--model", args.model]
    verifier += ["--device", args.device, "--tensor-parallel-size", str(args.tensor_parallel_size)]
    verifier += ["--proposers", proposers]  # for direct drafts: it calls them where the gateway does
    if args.draft_ahead_rejections != DEFAULT_AHEAD_REJECTIONS:
        verifier += ["--draft-ahead-rejections", str(args.draft_ahead_rejections)]
    if args.enforce_eager:
        verifier.append("--enforce-eager")
    gateway = [
        "serve-gateway",
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--model",
        args.model,
        "--verifiers",
        links.get("verifier", f"{args.host}:{args.verifier_port}"),
        "--proposers",
        proposers,
        "--method",
        args.method,
        "-k",
        str(args.num_speculative_tokens),
        "--prompt-lookup-max",
        str(args.prompt_lookup_max),
        "--prompt-lookup-min",
        str(args.prompt_lookup_min),
    ]
    if args.ngram_on_proposers:
        gateway.append("--ngram-on-proposers")
    if not args.verifier_ngram:
        gateway.append("--no-verifier-ngram")
    if args.api_key_file:
        gateway += ["--api-key-file", args.api_key_file]
    if not args.draft_ahead:
        gateway.append("--no-draft-ahead")
    if not args.pipeline:
        gateway.append("--no-pipeline")
    if args.direct_drafts:
        gateway.append("--direct-drafts")
    if args.http_port is not None:
        gateway += ["--http-port", str(args.http_port)]
    commands = {"verifier": verifier, "proposer": proposer, "gateway": gateway}
    if certs is not None:
        for command in commands.values():
            command += ["--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key)]
            command += ["--tls-ca-file", str(certs.ca)]
        for command in (gateway, verifier):
            command += [
                "--tls-client-cert-file",
                str(certs.client_cert),
                "--tls-client-key-file",
                str(certs.client_key),
            ]
    for name, port in metrics_ports(args).items():
        commands[name] += ["--metrics-port", str(port)]
    return {name: base + command for name, command in commands.items()}


def _delay_proxies(args: argparse.Namespace) -> dict[str, DelayProxy]:
    """One delaying proxy on each of the gateway's links, run by this process."""
    delay = args.network_delay_ms / 1000
    targets = {"verifier": args.verifier_port, "proposer": args.proposer_port}
    return {name: DelayProxy((args.host, port), delay, host=args.host).start() for name, port in targets.items()}


def metrics_ports(args: argparse.Namespace) -> dict[str, int]:
    """`up --metrics-port P`: the gateway's metrics on P, the verifier's on P+1, the proposer's on P+2."""
    if args.metrics_port is None:
        return {}
    return {name: args.metrics_port + i for i, name in enumerate(("gateway", "verifier", "proposer"))}


def _up(args: argparse.Namespace) -> int:
    if args.method not in METHODS_WITHOUT_MODEL and not args.draft_model:
        raise SplitspecError(f"--method {args.method} needs --draft-model DIR")
    if args.network_delay_ms < 0:
        raise SplitspecError(f"--network-delay-ms must be >= 0, got {args.network_delay_ms}")
    resolve_device(args.device)
    resolve_device(args.proposer_device or args.device)
    if args.model == "default":
        from splitspec.default_model import ensure_default_model

        ensure_default_model()  # convert once here rather than in two processes at the same time
    _api_keys(args)  # a bad key file is reported here, before anything starts
    if args.api_key is not None:  # to the gateway by its environment, not on its command line, where ps shows it
        os.environ["SPLITSPEC_API_KEY"] = ",".join(args.api_key)
    certs = make_stack_certificates(args.tls_dir, [args.host]) if args.tls_dir else None
    proxies = _delay_proxies(args) if args.network_delay_ms > 0 else {}
    links = {name: proxy.address for name, proxy in proxies.items()}
    procs = {name: subprocess.Popen(cmd) for name, cmd in up_commands(args, links, certs).items()}
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"splitspec up: gateway on {args.host}:{args.port} (Ctrl-C stops all three)", file=sys.stderr, flush=True)
    if certs is not None:
        print(
            f"splitspec up: TLS everywhere, mutual between the services; clients trust {certs.ca} "
            f"(splitspec generate --gateway {args.host}:{args.port} --tls-ca-file {certs.ca} ...)",
            file=sys.stderr,
            flush=True,
        )
    if args.http_port is not None:
        scheme = "https" if certs is not None else "http"
        print(
            f"splitspec up: OpenAI-compatible API at {scheme}://{args.host}:{args.http_port}/v1",
            file=sys.stderr,
            flush=True,
        )
    for name, port in metrics_ports(args).items():
        print(f"splitspec up: {name} metrics at http://{args.host}:{port}/metrics", file=sys.stderr, flush=True)
    for name, proxy in proxies.items():
        print(
            f"splitspec up: gateway -> {name} through {proxy.address}, {args.network_delay_ms} ms each way",
            file=sys.stderr,
            flush=True,
        )
    failed = None
    while not stopping and failed is None:
        time.sleep(0.2)
        failed = next((n for n, p in procs.items() if p.poll() is not None), None)
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in procs.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for proxy in proxies.values():
        proxy.stop()
    if failed is not None and not stopping:
        print(
            f"splitspec up: {failed} exited with status {procs[failed].returncode}; stopped the others", file=sys.stderr
        )
        return 1
    return 0
