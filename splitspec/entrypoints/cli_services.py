"""`splitspec serve-verifier | serve-proposer | serve-gateway | up`: flags, with environment defaults."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

from splitspec.config import HIDDEN_STATE_METHODS, METHODS_WITHOUT_MODEL
from splitspec.devices import resolve_device
from splitspec.entrypoints.cli_flags import suffix_settings_from
from splitspec.entrypoints.flag_table import add_flags, passed_on, settings_from
from splitspec.entrypoints.service_flags import (
    API_KEY_FLAG,
    GATEWAY_FLAGS,
    NUM_SPECULATIVE_TOKENS_FLAG,
    PROPOSER_FLAGS,
    SERVER_FLAGS,
    UP_FLAGS,
    VERIFIER_FLAGS,
)
from splitspec.errors import SplitspecError
from splitspec.netdelay import DelayProxy
from splitspec.rpc.grpc_server import ServerOptions
from splitspec.rpc.throwaway_certs import StackCertificates, make_stack_certificates
from splitspec.rpc.tls import ClientTls, ServerTls


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
    return settings_from(ServerOptions, args, SERVER_FLAGS, {"tls": _server_tls(args, client_ca)})


def add_service_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve-verifier", help="serve the target model (Verifier service)")
    add_flags(p, VERIFIER_FLAGS)
    p.set_defaults(func=_serve_verifier)

    p = sub.add_parser("serve-proposer", help="serve a drafter (Proposer service)")
    add_flags(p, PROPOSER_FLAGS)
    p.set_defaults(func=_serve_proposer)

    p = sub.add_parser("serve-gateway", help="serve the public Gateway service")
    add_flags(p, GATEWAY_FLAGS)
    p.set_defaults(func=_serve_gateway)

    p = sub.add_parser("up", help="start verifier, proposer and gateway locally as separate processes")
    add_flags(p, UP_FLAGS)
    p.set_defaults(func=_up)


def _api_keys(args: argparse.Namespace) -> list[str]:
    """The keys from --api-key (or SPLITSPEC_API_KEY when none is given) and --api-key-file."""
    from splitspec.rpc.api_keys import read_api_keys

    given = args.api_key if args.api_key is not None else [os.environ.get(API_KEY_FLAG.env_var, "")]
    return read_api_keys(given, args.api_key_file)


def _serve_verifier(args: argparse.Namespace) -> int:
    _yield_idle_cores()
    resolve_device(args.device)
    from splitspec.entrypoints.verifier_head import build_local_speculator
    from verifier_svc.server import VerifierSettings, run_verifier

    built = {
        "server": _server_options(args),
        "client_tls": _client_tls(args),
        "build_speculator": build_local_speculator,
    }
    run_verifier(settings_from(VerifierSettings, args, VERIFIER_FLAGS, built))
    return 0


def _serve_proposer(args: argparse.Namespace) -> int:
    _yield_idle_cores()
    from proposer_svc.server import ProposerSettings, run_proposer

    if args.method not in METHODS_WITHOUT_MODEL and not args.draft_model:
        raise SplitspecError(f"--method {args.method} needs --draft-model DIR")
    resolve_device(args.device)
    if args.method in ("eagle", "eagle3") and not args.target_model:
        raise SplitspecError(
            f"--method {args.method} needs --target-model (the verifier's model), whose layers and embedding "
            "it drafts with"
        )
    built = {"server": _server_options(args), "speculative.suffix": suffix_settings_from(args)}
    run_proposer(settings_from(ProposerSettings, args, PROPOSER_FLAGS, built))
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

    built = {
        "server": server,
        "client_tls": client_tls,
        "api_keys": tuple(api_keys),
        "prompt_lookup": (args.prompt_lookup_min, args.prompt_lookup_max),
    }
    run_gateway(settings_from(GatewaySettings, args, GATEWAY_FLAGS, built))
    return 0


def head_beside_the_target(args: argparse.Namespace) -> bool:
    """`up` puts a head that reads the target's hidden states in the verifier (--speculator-on)."""
    return args.method in HIDDEN_STATE_METHODS and args.speculator_on == "verifier"


def up_commands(
    args: argparse.Namespace, links: dict[str, str] | None = None, certs: StackCertificates | None = None
) -> dict[str, list[str]]:
    """The processes `splitspec up` starts (docker-compose.yml mirrors these): verifier, proposer and
    gateway, or no proposer when the head drafts beside the target in the verifier. Each gets the flags
    `up` passes on to it (service_flags.UP_FLAGS) and where it listens. links: the address the gateway
    reaches "verifier" and "proposer" at, when not their own (a delaying proxy). certs: for TLS
    everywhere, mutual between the services (--tls-dir)."""
    serve_speculators_head(args)
    links = links or {}
    beside = head_beside_the_target(args)
    proposers = "" if beside else links.get("proposer", f"{args.host}:{args.proposer_port}")
    verifier = ["serve-verifier", "--host", args.host, "--port", str(args.verifier_port)]
    verifier += ["--proposers", proposers]  # for direct drafts: it calls them where the gateway does
    if beside:
        head = {"method": args.method, "model": args.draft_model, "num_speculative_tokens": args.num_speculative_tokens}
        verifier += ["--speculative-config", json.dumps(head)]
    proposer = ["serve-proposer", "--host", args.host, "--port", str(args.proposer_port)]
    proposer += ["--device", args.proposer_device or args.device]
    if args.method in ("eagle", "eagle3"):
        proposer += ["--target-model", args.model]
    gateway = ["serve-gateway", "--host", args.host, "--port", str(args.port)]
    gateway += ["--verifiers", links.get("verifier", f"{args.host}:{args.verifier_port}"), "--proposers", proposers]
    commands = {"verifier": verifier, "proposer": proposer, "gateway": gateway}
    if beside:
        del commands["proposer"]
    for name, command in commands.items():
        command += passed_on(args, UP_FLAGS, name)
    if certs is not None:
        for command in commands.values():
            command += ["--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key)]
            command += ["--tls-ca-file", str(certs.ca)]
        for command in (gateway, verifier):
            command += ["--tls-client-cert-file", str(certs.client_cert)]
            command += ["--tls-client-key-file", str(certs.client_key)]
    for name, port in metrics_ports(args).items():
        if name in commands:
            commands[name] += ["--metrics-port", str(port)]
    base = [sys.executable, "-m", "splitspec"]
    return {name: base + command for name, command in commands.items()}


def _delay_proxies(args: argparse.Namespace) -> dict[str, DelayProxy]:
    """One delaying proxy on each of the gateway's links, run by this process."""
    delay = args.network_delay_ms / 1000
    targets = {"verifier": args.verifier_port}
    if not head_beside_the_target(args):
        targets["proposer"] = args.proposer_port
    return {name: DelayProxy((args.host, port), delay, host=args.host).start() for name, port in targets.items()}


def metrics_ports(args: argparse.Namespace) -> dict[str, int]:
    """`up --metrics-port P`: the gateway's metrics on P, the verifier's on P+1, the proposer's on P+2."""
    if args.metrics_port is None:
        return {}
    return {name: args.metrics_port + i for i, name in enumerate(("gateway", "verifier", "proposer"))}


def serve_speculators_head(args: argparse.Namespace) -> None:
    """--model may be an EAGLE-3 head in the speculators format: the stack then serves the target its
    config names, with the head and the K it proposes (unless -k says), as vLLM does."""
    from splitspec.eagle3_checkpoint import speculators_serving

    served = speculators_serving(args.model)
    if served is None:
        return
    if args.method not in ("ngram", "eagle3") or args.draft_model:
        raise SplitspecError(f"--model {args.model} is an EAGLE-3 head, which names its target: give no other drafter")
    target, spec = served
    args.model, args.method, args.draft_model = target, "eagle3", spec["model"]
    if args.num_speculative_tokens == NUM_SPECULATIVE_TOKENS_FLAG.default:
        args.num_speculative_tokens = spec["num_speculative_tokens"]


def _up(args: argparse.Namespace) -> int:
    serve_speculators_head(args)
    if args.method not in METHODS_WITHOUT_MODEL and not args.draft_model:
        raise SplitspecError(f"--method {args.method} needs --draft-model DIR")
    if args.network_delay_ms < 0:
        raise SplitspecError(f"--network-delay-ms must be >= 0, got {args.network_delay_ms}")
    resolve_device(args.device)
    resolve_device(args.proposer_device or args.device)
    suffix_settings_from(args)  # bad suffix settings are reported here, before anything starts
    if args.model == "default":
        from splitspec.default_model import ensure_default_model

        ensure_default_model()  # convert once here rather than in two processes at the same time
    _api_keys(args)  # a bad key file is reported here, before anything starts
    if args.api_key is not None:  # to the gateway by its environment, not on its command line, where ps shows it
        os.environ[API_KEY_FLAG.env_var] = ",".join(args.api_key)
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
    print(
        f"splitspec up: gateway on {args.host}:{args.port} (Ctrl-C stops {', '.join(procs)})",
        file=sys.stderr,
        flush=True,
    )
    if head_beside_the_target(args):
        print(
            f"splitspec up: the {args.method} head drafts beside the target, in the verifier",
            file=sys.stderr,
            flush=True,
        )
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
        if name not in procs:
            continue
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
