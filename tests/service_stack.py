"""Stacks of real service processes on free loopback ports, always stopped; and what tests ask of
processes. Starting one service is splitspec.entrypoints.service_processes, re-exported here."""

from __future__ import annotations

import subprocess
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from splitspec.entrypoints.service_processes import ServiceProcess, start_service
from splitspec.entrypoints.service_processes import health_status as health_status  # for the test modules
from splitspec.net_ports import free_port
from splitspec.netdelay import DelayProxy
from splitspec.rpc.throwaway_certs import StackCertificates
from splitspec_protos import splitspec_v1_pb2 as pb
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc


def wait_for(predicate, timeout: float = 15.0) -> bool:
    """Poll until predicate() is true or the timeout passes; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def child_pids(pid: int) -> list[int]:
    """The live children of a process (pgrep never lists itself)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def descendant_pids(pid: int) -> list[int]:
    """Its children, theirs, and so on: read while it lives, since an orphan's parent becomes init."""
    children = child_pids(pid)
    return children + [d for child in children for d in descendant_pids(child)]


def process_gone(pid: int) -> bool:
    """Exited (or a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] == "Z"
    except FileNotFoundError:
        return True


@dataclass
class Stack:
    verifier: ServiceProcess
    proposers: list[ServiceProcess]
    gateway: ServiceProcess
    processes: list[ServiceProcess] = field(default_factory=list)
    http_base_url: str | None = None  # the gateway's OpenAI-compatible API, where it serves one

    def verifier_info(self) -> pb.VerifierInfo:
        with grpc.insecure_channel(self.verifier.address) as channel:
            return pb_grpc.VerifierStub(channel).GetInfo(pb.InfoRequest(), timeout=5)


@contextmanager
def running_stack(
    model: Path | str,
    log_dir: Path,
    *,
    method: str = "ngram",
    k: int = 3,
    draft_model: Path | str | None = None,
    num_proposers: int = 1,
    verifier_args: tuple[str, ...] = (),
    proposer_args: tuple[str, ...] = (),
    gateway_args: tuple[str, ...] = (),
    network_delay_ms: float = 0.0,
    proposer_delay_ms: float | None = None,
    ngram_on_proposers: bool = True,
    tls: StackCertificates | None = None,
    metrics: bool = False,
):
    """Verifier, proposer(s) and gateway as separate processes; all stopped on exit, even on failure.
    network_delay_ms: the gateway reaches the others through delaying proxies (splitspec.netdelay);
    proposer_delay_ms, if given, is the delay on its links to the proposers instead.
    ngram_on_proposers: n-gram drafts come from the proposers (the path these tests exercise), not from
    the verifier itself (the gateway's default, tested where it says so).
    tls: TLS on every port, mutual between the services, as `splitspec up --tls-dir` sets it up; each
    service also answers health checks in plaintext on a port of its own, which the stack waits on.
    metrics: every service serves /metrics (ServiceProcess.metrics_port)."""
    tls_args: tuple[str, ...] = ()
    if tls is not None:
        tls_args = ("--tls-cert-file", str(tls.server_cert), "--tls-key-file", str(tls.server_key))
        tls_args += ("--tls-ca-file", str(tls.ca))
        client_pair = ("--tls-client-cert-file", str(tls.client_cert), "--tls-client-key-file", str(tls.client_key))
        gateway_args, verifier_args = (*gateway_args, *client_pair), (*verifier_args, *client_pair)
    verifier_args, proposer_args, gateway_args = (tls_args + a for a in (verifier_args, proposer_args, gateway_args))
    health_port = tls is not None
    with ExitStack() as cleanup:

        def link(address: str, delay_ms: float = network_delay_ms) -> str:
            if not delay_ms:
                return address
            host, port = address.rsplit(":", 1)
            return cleanup.enter_context(DelayProxy((host, int(port)), delay_ms / 1000)).address

        proposers = []
        for i in range(num_proposers):
            args = ["serve-proposer", "--method", method, "-k", str(k), *proposer_args]
            if draft_model is not None:
                args += ["--draft-model", str(draft_model)]
            if method in ("eagle", "eagle3"):
                args += ["--target-model", str(model)]
            proposer = start_service(f"proposer{i}", args, log_dir, health_port=health_port, metrics=metrics)
            cleanup.callback(proposer.stop)
            proposers.append(proposer)
        # the proposers as the gateway reaches them, which the verifier then calls for remote drafts:
        # it starts after them to know their addresses, bound at start-up
        proposer_links = ",".join(link(p.address, proposer_delay_ms or network_delay_ms) for p in proposers)
        verifier_args = ("--proposers", proposer_links, *verifier_args)
        verifier = start_service(
            "verifier",
            ["serve-verifier", "--model", str(model), *verifier_args],
            log_dir,
            health_port=health_port,
            metrics=metrics,
        )
        cleanup.callback(verifier.stop)
        gateway = start_service(
            "gateway",
            [
                "serve-gateway",
                "--model",
                str(model),
                "--verifiers",
                link(verifier.address),
                "--proposers",
                proposer_links,
                "-k",
                str(k),
                "--method",
                method,
                *(("--ngram-on-proposers",) if method == "ngram" and ngram_on_proposers else ()),
                *gateway_args,
            ],
            log_dir,
            health_port=health_port,
            metrics=metrics,
        )
        cleanup.callback(gateway.stop)
        yield Stack(verifier, proposers, gateway, [verifier, *proposers, gateway])


TEXT_STACK_K = 3
TEXT_STACK_KV_BYTES = 64 << 20
TEXT_STACK_MAX_TOKENS_LIMIT = 400
TEXT_STACK_MODEL_NAME = "smollm2"
VERIFIER_STARTUP_S = 900  # it measures its pass costs before serving: minutes on a busy two-core machine


@contextmanager
def default_model_text_stack(model: Path, log_dir: Path):
    """The default model as verifier, ngram proposer and gateway processes, with a small KV cache, a
    fixed K (so that rounds, and every verify pass, are the same in and out of process) and the OpenAI
    HTTP API served as TEXT_STACK_MODEL_NAME. Shared by the modules that need text (conftest's
    `default_model_stack`): starting it is the slowest part of their tests."""
    with ExitStack() as cleanup:
        verifier_args = ["serve-verifier", "--model", str(model), "--kv-cache-memory-bytes", str(TEXT_STACK_KV_BYTES)]
        verifier = start_service("verifier", verifier_args, log_dir, timeout=VERIFIER_STARTUP_S)
        cleanup.callback(verifier.stop)
        proposer_args = ["serve-proposer", "--method", "ngram", "-k", str(TEXT_STACK_K)]
        proposer = start_service("proposer", proposer_args, log_dir)
        cleanup.callback(proposer.stop)
        http_port = free_port()
        gateway_args = ["serve-gateway", "--model", str(model), "--verifiers", verifier.address]
        gateway_args += ["--proposers", proposer.address, "-k", str(TEXT_STACK_K), "--fixed-k"]
        gateway_args += ["--http-port", str(http_port), "--served-model-name", TEXT_STACK_MODEL_NAME]
        gateway_args += ["--max-tokens-limit", str(TEXT_STACK_MAX_TOKENS_LIMIT)]
        gateway = start_service("gateway", gateway_args, log_dir, metrics=True)
        cleanup.callback(gateway.stop)
        yield Stack(verifier, [proposer], gateway, [verifier, proposer, gateway], f"http://127.0.0.1:{http_port}/v1")
