"""Every flag of serve-verifier, serve-proposer, serve-gateway and up, one row each
(splitspec.entrypoints.flag_table): its name, SPLITSPEC_ variable, type, default and help, beside the
settings field it fills: ServerOptions (splitspec.rpc.grpc_server) under "server", VerifierSettings
(verifier_svc.server), ProposerSettings (proposer_svc.server) and GatewaySettings (gateway_svc.server).
cli_services makes the parsers, the settings and `up`'s commands from these rows, and
tests/entrypoints/test_flag_table.py holds docker-compose.yml and deploy/k8s/ to them."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from splitspec.config import DEFAULT_NUM_SPECULATIVE_TOKENS, MAX_TREE_WIDTH, SPECULATION_METHODS
from splitspec.draft_limits import DEFAULT_AHEAD_REJECTIONS, MAX_DRAFTS_PER_STEP
from splitspec.entrypoints.cli_flags import (
    ENFORCE_EAGER_FLAG,
    PREFIX_CACHING_FLAG,
    SUFFIX_FLAGS,
    TENSOR_PARALLEL_FLAG,
    device_flag,
    quantization_flag,
)
from splitspec.entrypoints.flag_table import ON_OFF, Flag, passed, within
from splitspec.rpc.targets import Target, parse_targets

OTHER_VARIABLES = {
    "SPLITSPEC_CACHE": "where the default model is converted (splitspec.default_model)",
    "SPLITSPEC_GATEWAY_PORT": "docker-compose.yml: the host port the gateway is published on",
    "SPLITSPEC_PROPOSER_DEVICE": "docker-compose.yml: the proposer's --device (up's --proposer-device)",
}
"""SPLITSPEC_ variables that are no flag's: read elsewhere, or only by docker-compose.yml."""


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def within_tree_width(text: str) -> int:
    """An argparse type: an integer from 1 to MAX_TREE_WIDTH."""
    value = positive_int(text)
    if value > MAX_TREE_WIDTH:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_TREE_WIDTH}, got {text!r}")
    return value


def json_object(text: str) -> dict:
    """An argparse type: a JSON object, as vLLM's --speculative-config."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r}: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r}")
    return value


def targets(text: str) -> tuple[Target, ...]:
    """An argparse type: comma-separated host:port and dns:///name:port entries."""
    try:
        return parse_targets(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


SERVER_FLAGS = (
    Flag("--host", default="127.0.0.1", env="HOST", help="address to listen on (env SPLITSPEC_HOST)"),
    Flag("--port", type=int, default=0, env="PORT", help="port (env SPLITSPEC_PORT)"),
    Flag("--max-message-bytes", type=int, default=64 << 20, env="MAX_MESSAGE_BYTES"),
    Flag("--keepalive-time-ms", type=int, default=20_000, env="KEEPALIVE_TIME_MS"),
    Flag("--keepalive-timeout-ms", type=int, default=10_000, env="KEEPALIVE_TIMEOUT_MS"),
    Flag("--grace-seconds", type=float, default=10.0, env="GRACE_SECONDS", help="drain time on SIGTERM"),
    Flag(
        "--metrics-port",
        type=int,
        env="METRICS_PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (env SPLITSPEC_METRICS_PORT; default: none)",
    ),
    Flag(
        "--otlp-traces-endpoint",
        help="send OpenTelemetry traces by OTLP to this endpoint (default: the OTEL_EXPORTER_OTLP_TRACES_ENDPOINT "
        "or OTEL_EXPORTER_OTLP_ENDPOINT environment; off when neither is set)",
    ),
    Flag(
        "--tls-cert-file",
        env="TLS_CERT_FILE",
        help="serve TLS with this PEM certificate (chain), re-read when the file changes (env SPLITSPEC_TLS_CERT_FILE)",
        fills=("tls",),
    ),
    Flag("--tls-key-file", env="TLS_KEY_FILE", help="its private key (env SPLITSPEC_TLS_KEY_FILE)", fills=("tls",)),
    Flag(
        "--health-port",
        type=int,
        env="HEALTH_PORT",
        help="also answer gRPC health checks, and nothing else, in plaintext on this port: for probes that cannot "
        "present a client certificate (env SPLITSPEC_HEALTH_PORT)",
    ),
)
"""ServerOptions; each service listens on its own --port by default."""


def _server(port: int) -> tuple[Flag, ...]:
    return within("server", (replace(row, default=port) if row.name == "--port" else row for row in SERVER_FLAGS))


def _tls_ca_flag(use: str, fills: tuple[str, ...]) -> Flag:
    return Flag("--tls-ca-file", env="TLS_CA_FILE", help=f"{use} (env SPLITSPEC_TLS_CA_FILE)", fills=fills)


def _client_certificate_flags(who: str) -> tuple[Flag, ...]:
    return (
        Flag(
            "--tls-client-cert-file",
            env="TLS_CLIENT_CERT_FILE",
            help=f"the certificate {who} that require one; by default --tls-cert-file (env SPLITSPEC_TLS_CLIENT_CERT_FILE)",
            fills=("client_tls",),
        ),
        Flag(
            "--tls-client-key-file",
            env="TLS_CLIENT_KEY_FILE",
            help="its private key (env SPLITSPEC_TLS_CLIENT_KEY_FILE)",
            fills=("client_tls",),
        ),
    )


def _max_drafts_flag(what: str) -> Flag:
    return Flag(
        "--max-drafts-per-step",
        type=positive_int,
        default=MAX_DRAFTS_PER_STEP,
        env="MAX_DRAFTS_PER_STEP",
        help=f"{what}; more is refused with INVALID_ARGUMENT (env SPLITSPEC_MAX_DRAFTS_PER_STEP)",
    )


DRAFT_AHEAD_REJECTIONS_FLAG = Flag(
    "--draft-ahead-rejections",
    type=non_negative_int,
    default=DEFAULT_AHEAD_REJECTIONS,
    env="DRAFT_AHEAD_REJECTIONS",
    help="with direct drafts (gateway --direct-drafts), the verifier also drafts ahead for the outcomes "
    "where one of a step's first N drafts is rejected, besides the one where all are accepted; 0: only "
    "that one (env SPLITSPEC_DRAFT_AHEAD_REJECTIONS)",
    pass_default=False,  # docker-compose.yml mirrors `up`'s defaults and leaves it to the verifier's own
)
NUM_SPECULATIVE_TOKENS_FLAG = Flag(
    "--num-speculative-tokens",
    short="-k",
    type=int,
    default=DEFAULT_NUM_SPECULATIVE_TOKENS,
    env="NUM_SPECULATIVE_TOKENS",
)
PROMPT_LOOKUP_FLAGS = (
    Flag("--prompt-lookup-max", type=int, default=4, env="PROMPT_LOOKUP_MAX"),
    Flag("--prompt-lookup-min", type=int, default=1, env="PROMPT_LOOKUP_MIN"),
)

VERIFIER_FLAGS = (
    *_server(50052),
    Flag("--model", default="default", env="MODEL", help="target checkpoint (env SPLITSPEC_MODEL)"),
    *within(
        "runner",
        (
            Flag("--max-num-seqs", type=int, default=64, env="MAX_NUM_SEQS"),
            Flag(
                "--kv-cache-memory-bytes",
                type=int,
                env="KV_CACHE_MEMORY_BYTES",
                help="KV cache size; default: what --gpu-memory-utilization leaves on CUDA, 1 GiB on the CPU "
                "(env SPLITSPEC_KV_CACHE_MEMORY_BYTES)",
            ),
            Flag(
                "--gpu-memory-utilization",
                type=float,
                default=0.9,
                env="GPU_MEMORY_UTILIZATION",
                help="fraction of the GPU the target may use in all (env SPLITSPEC_GPU_MEMORY_UTILIZATION)",
            ),
            Flag("--max-model-len", type=int),
        ),
    ),
    Flag("--batch-window-ms", type=float, default=2.0, env="BATCH_WINDOW_MS"),
    _max_drafts_flag("the most drafts one step may carry, or ask the verifier to make"),
    Flag(
        "--no-draft-cuts",
        action="store_true",
        negate=True,
        fills=("draft_cuts",),
        help="verify every draft a step carries; by default each pass verifies of each step's drafts only "
        "those that raise the whole batch's expected tokens per second (verifier_svc/draft_cuts.py)",
    ),
    DRAFT_AHEAD_REJECTIONS_FLAG,
    Flag(
        "--speculative-config",
        type=json_object,
        env="SPECULATIVE_CONFIG",
        help='a head that drafts beside the target, as vLLM\'s: \'{"model": DIR}\' with "method" (eagle3, eagle, '
        'mlp_speculator; default: detected) and "num_speculative_tokens" (default: the head\'s own for a '
        "speculators checkpoint). The gateways then draft every request with it here: no proposer, and no "
        "hidden state crosses a network (env SPLITSPEC_SPECULATIVE_CONFIG)",
    ),
    Flag(
        "--proposers",
        type=targets,
        default="",
        env="PROPOSERS",
        help="the only proposers remote drafts (gateway --direct-drafts) may make this verifier call: "
        "comma-separated host:port entries, and dns:///name:port for every address the name resolves to, as "
        "the gateway's --proposers; a step naming any other is refused with PERMISSION_DENIED. Default: none, "
        "every remote draft is refused (env SPLITSPEC_PROPOSERS)",
    ),
    _tls_ca_flag(
        "require clients (the gateways) to present a certificate signed by this CA: mutual TLS; and call "
        "proposers for remote drafts (gateway --direct-drafts) over TLS, checking theirs against it",
        fills=("server.tls", "client_tls"),
    ),
    *_client_certificate_flags("the verifier presents to proposers it asks for drafts (gateway --direct-drafts)"),
    *within(
        "runner",
        (
            device_flag("the target"),
            TENSOR_PARALLEL_FLAG,
            ENFORCE_EAGER_FLAG,
            quantization_flag("the target"),
            PREFIX_CACHING_FLAG,
        ),
    ),
)

METHOD_FLAG = Flag("--method", default="ngram", env="METHOD", choices=SPECULATION_METHODS)
DRAFT_MODEL_FLAG = Flag(
    "--draft-model", env="DRAFT_MODEL", help="draft, speculator or EAGLE checkpoint (all methods but ngram and suffix)"
)
DRAFT_TOP_K_FLAG = Flag("--draft-top-k", type=int, default=16)

PROPOSER_FLAGS = (
    *_server(50053),
    *within(
        "speculative",
        (
            METHOD_FLAG,
            NUM_SPECULATIVE_TOKENS_FLAG,
            DRAFT_MODEL_FLAG,
            *PROMPT_LOOKUP_FLAGS,
            DRAFT_TOP_K_FLAG,
            *within("suffix", SUFFIX_FLAGS),
            quantization_flag("the draft model (--method draft_model)"),
        ),
    ),
    Flag(
        "--target-model",
        env="TARGET_MODEL",
        help="the verifier's checkpoint, for --method eagle and eagle3 (env SPLITSPEC_TARGET_MODEL)",
    ),
    Flag("--batch-window-ms", type=float, default=1.0, env="BATCH_WINDOW_MS"),
    _max_drafts_flag("the most drafts one call may ask for"),
    _tls_ca_flag(
        "require clients (the gateways) to present a certificate signed by this CA: mutual TLS", fills=("server.tls",)
    ),
    device_flag("the drafter (draft_model, mlp_speculator, eagle, eagle3)"),
)

ROUND_TRIP_FLAGS = (
    Flag(
        "--ngram-on-proposers",
        action="store_true",
        negate=True,
        fills=("local_ngram",),
        help="with an n-gram drafter, ask the proposers for drafts; by default the verifiers draft the n-grams "
        "themselves, which saves each round the trip to a proposer",
    ),
    Flag(
        "--no-verifier-ngram",
        dest="verifier_ngram",
        action="store_false",
        help="with a draft-model drafter, draft on the proposers only; by default the verifiers also draft "
        "n-grams, and each greedy request's rounds are drafted where the gateway measures more tokens per "
        "second, on its verifier (no trip to a proposer) or on its proposer",
    ),
    Flag(
        "--no-draft-ahead",
        dest="draft_ahead",
        action="store_false",
        help="do not ask the proposer for the next round's draft while the verifier checks this one (by default "
        "it drafts ahead for the round's likeliest outcome, and a round whose outcome matches needs no trip to "
        "the proposer after the verifier's answer)",
    ),
    Flag(
        "--no-pipeline",
        dest="pipeline",
        action="store_false",
        fills=("pipeline_steps",),
        help="send each round's step only after the last one's result (by default rounds that need no proposer, "
        "n-grams drafted on the verifier or K=0, keep several steps in flight, which the verifier runs back to "
        "back, so no round waits for the link to the gateway)",
    ),
    Flag(
        "--direct-drafts",
        action="store_true",
        help="have the verifiers ask the proposers for each round's draft themselves, right before the round "
        "runs: a round crosses the verifier's link to the proposer instead of the gateway's two, hidden states "
        "go straight from verifier to proposer, and rounds of every drafter keep several steps in flight. "
        "The verifiers must reach the proposers at the addresses the gateway uses, and call only those their "
        "serve-verifier --proposers lists (up gives them the gateway's)",
    ),
)
"""How the gateway's rounds reach the proposers."""
API_KEY_FLAG = Flag(
    "--api-key",
    action="append",
    env="API_KEY",
    fills=("api_keys",),
    help="require 'authorization: Bearer KEY' on every call but health checks (UNAUTHENTICATED otherwise); "
    "repeatable; env SPLITSPEC_API_KEY, comma-separated for several",
)
API_KEY_FILE_FLAG = Flag(
    "--api-key-file", help="more keys, one per line ('#' starts a comment line)", fills=("api_keys",)
)

TREE_WIDTH_FLAG = Flag(
    "--tree-width",
    type=within_tree_width,
    default=1,
    env="TREE_WIDTH",
    help=f"n-gram drafts made on the verifier are trees with at most this many branches per token (1 to "
    f"{MAX_TREE_WIDTH}; 1: chains), of -k tokens verified in one pass (env SPLITSPEC_TREE_WIDTH)",
)

GATEWAY_FLAGS = (
    *_server(50051),
    Flag("--model", default="default", env="MODEL", help="checkpoint whose tokenizer to use (env SPLITSPEC_MODEL)"),
    Flag(
        "--verifiers",
        type=targets,
        default="127.0.0.1:50052",
        env="VERIFIERS",
        help="comma-separated verifier addresses: host:port, or dns:///name:port for every address the name "
        "resolves to, re-resolved every --resolve-interval-s (env SPLITSPEC_VERIFIERS)",
    ),
    Flag(
        "--proposers",
        type=targets,
        default="127.0.0.1:50053",
        env="PROPOSERS",
        help="comma-separated proposer addresses, as --verifiers ('' for none; env SPLITSPEC_PROPOSERS)",
    ),
    Flag(
        "--resolve-interval-s",
        type=float,
        default=5.0,
        env="RESOLVE_INTERVAL_S",
        help="how often dns:/// names are resolved again (new addresses join, vanished ones are drained) "
        "and the client TLS files are checked for a renewal (env SPLITSPEC_RESOLVE_INTERVAL_S)",
    ),
    Flag(
        "--method",
        env="METHOD",
        choices=SPECULATION_METHODS,
        help="refuse proposers whose drafter is another (env SPLITSPEC_METHOD); by default the gateway plans "
        "rounds for whatever drafter its proposers report, and with no proposers the verifiers draft n-grams",
    ),
    Flag(
        "--num-speculative-tokens",
        short="-k",
        type=int,
        env="NUM_SPECULATIVE_TOKENS",
        help="drafts per round unless a request says otherwise (env SPLITSPEC_NUM_SPECULATIVE_TOKENS); by "
        "default the proposers' own -k",
    ),
    Flag("--max-concurrent-requests", type=int, default=256, env="MAX_CONCURRENT_REQUESTS"),
    Flag(
        "--max-tokens-limit",
        type=int,
        env="MAX_TOKENS_LIMIT",
        help="refuse requests whose max_tokens is above this (INVALID_ARGUMENT; env SPLITSPEC_MAX_TOKENS_LIMIT); "
        "by default only the model's context bounds them",
    ),
    Flag(
        "--http-port",
        type=int,
        env="HTTP_PORT",
        help="also serve the OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models, "
        "/health, /metrics) on this port of --host (env SPLITSPEC_HTTP_PORT)",
    ),
    Flag(
        "--served-model-name",
        env="SERVED_MODEL_NAME",
        help="the model name HTTP clients send and /v1/models lists (default: --model as given; "
        "env SPLITSPEC_SERVED_MODEL_NAME)",
    ),
    Flag("--proposer-timeout-s", type=float, default=5.0, env="PROPOSER_TIMEOUT_S"),
    Flag(
        "--verifier-wait-s",
        type=float,
        default=30.0,
        env="VERIFIER_WAIT_S",
        help="how long a request whose verifier failed waits for another (or its deadline, if sooner) "
        "before UNAVAILABLE (env SPLITSPEC_VERIFIER_WAIT_S)",
    ),
    Flag(
        "--prefix-routing",
        action=ON_OFF,
        default=True,
        help="start each request on the verifier most likely to cache its prompt's beginning, within load "
        "bounds (rendezvous hashing on its first 256 tokens: every gateway agrees); --no-prefix-routing: on "
        "the least loaded",
    ),
    Flag(
        "--fixed-k",
        action="store_true",
        negate=True,
        fills=("adaptive",),
        help="always draft -k tokens (no adaptive draft length)",
    ),
    *(replace(row, fills=("prompt_lookup",)) for row in PROMPT_LOOKUP_FLAGS),
    TREE_WIDTH_FLAG,
    *ROUND_TRIP_FLAGS,
    API_KEY_FLAG,
    API_KEY_FILE_FLAG,
    _tls_ca_flag(
        "call the verifiers and proposers over TLS, checking their certificates against this CA, and present "
        "--tls-client-cert-file (by default --tls-cert-file) to them",
        fills=("client_tls",),
    ),
    *_client_certificate_flags("the gateway presents to verifiers and proposers"),
)

UP_FLAGS = (
    Flag("--model", default="default", env="MODEL", passed_to=("verifier", "gateway")),
    Flag("--port", type=int, default=50051, help="gateway port"),
    Flag("--verifier-port", type=int, default=50052),
    Flag(
        "--http-port",
        type=int,
        env="HTTP_PORT",
        help="the gateway also serves the OpenAI-compatible HTTP API on this port (env SPLITSPEC_HTTP_PORT)",
        passed_to=("gateway",),
    ),
    Flag("--proposer-port", type=int, default=50053),
    Flag("--host", default="127.0.0.1"),
    *passed(("proposer", "gateway"), (METHOD_FLAG, NUM_SPECULATIVE_TOKENS_FLAG)),
    *passed(("proposer",), (DRAFT_MODEL_FLAG,)),
    *passed(("proposer", "gateway"), PROMPT_LOOKUP_FLAGS),
    *passed(("gateway",), (TREE_WIDTH_FLAG,)),
    *passed(("proposer",), (DRAFT_TOP_K_FLAG, *SUFFIX_FLAGS)),
    *passed(("verifier",), (device_flag("the verifier's target"),)),
    Flag("--proposer-device", help="where the proposer's drafter runs (default: --device)"),
    Flag(
        "--speculator-on",
        default="verifier",
        choices=("verifier", "proposer"),
        help="where a head that reads the target's hidden states (eagle3, eagle, mlp_speculator) drafts: beside "
        "the target in the verifier (no proposer is started, no state crosses a network), or on a proposer "
        "that the verifier sends the states to",
    ),
    *passed(
        ("verifier",),
        (TENSOR_PARALLEL_FLAG, ENFORCE_EAGER_FLAG, quantization_flag("the verifier's target"), PREFIX_CACHING_FLAG),
    ),
    Flag(
        "--metrics-port",
        type=int,
        help="Prometheus metrics: the gateway's on this port, the verifier's on the next, the proposer's on the one after",
    ),
    Flag(
        "--network-delay-ms",
        type=float,
        default=0.0,
        help="delay every byte between the services by this one-way latency (a TCP proxy on each link), to see "
        "how the stack fares when its pods are apart",
    ),
    Flag(
        "--tls-dir",
        help="mutual TLS between the services and TLS to the gateway, with a throwaway CA kept in this directory "
        "(ca.pem, for clients to trust) and certificates made at each start; not for production",
    ),
    *passed(("gateway",), ROUND_TRIP_FLAGS),
    *passed(("verifier",), (DRAFT_AHEAD_REJECTIONS_FLAG,)),
    API_KEY_FLAG,  # to the gateway by its environment, not on its command line, where ps shows it
    *passed(("gateway",), (API_KEY_FILE_FLAG,)),
)
"""`splitspec up`'s flags and the services it passes each on to; the rest it uses itself (up_commands)."""

SERVICE_FLAGS = {"serve-verifier": VERIFIER_FLAGS, "serve-proposer": PROPOSER_FLAGS, "serve-gateway": GATEWAY_FLAGS}
"""Each service command's rows."""
