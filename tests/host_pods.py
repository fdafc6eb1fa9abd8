"""Verifiers, proposers and gateways, each started on its own host (separate_hosts), stopped by the
caller's ExitStack: what the failover and scale-out tests build their stacks from."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from separate_hosts import Host, SeparateHosts
from service_stack import ServiceProcess, start_service

VERIFIER_PORT = 50052
PROPOSER_PORT = 50053
METRICS_PORT = 9400
"""Where a pod that is asked to serves /metrics: on its own host, so every pod can use the same port."""


def verifiers_on_hosts(
    model: Path,
    hosts: SeparateHosts,
    log_dir: Path,
    cleanup: ExitStack,
    count: int,
    grace_seconds: float = 5,
    *extra: str,
) -> list[ServiceProcess]:
    """`count` verifiers, all on VERIFIER_PORT (as pods behind one DNS name are); `extra`: more
    serve-verifier flags."""
    verifiers = []
    for i in range(count):
        verifier = start_service(
            f"verifier{i}", ["serve-verifier", "--model", str(model), *extra], log_dir, on=hosts.add(f"verifier{i}"),
            port=VERIFIER_PORT, grace_seconds=grace_seconds,
        )  # fmt: skip
        cleanup.callback(verifier.stop)
        verifiers.append(verifier)
    return verifiers


def proposers_on_hosts(
    hosts: SeparateHosts, log_dir: Path, cleanup: ExitStack, count: int, grace_seconds: float = 5, *extra: str
) -> list[ServiceProcess]:
    """`count` ngram proposers (K=3), all on PROPOSER_PORT; `extra`: more serve-proposer flags."""
    proposers = []
    for i in range(count):
        proposer = start_service(
            f"proposer{i}", ["serve-proposer", "-k", "3", *extra], log_dir, on=hosts.add(f"proposer{i}"),
            port=PROPOSER_PORT, grace_seconds=grace_seconds,
        )  # fmt: skip
        cleanup.callback(proposer.stop)
        proposers.append(proposer)
    return proposers


def gateway_on_host(
    model: Path, host: Host, log_dir: Path, cleanup: ExitStack, verifiers: str, proposers: str, *extra: str
) -> ServiceProcess:
    gateway = start_service(
        f"gateway-{host.name}",
        [
            "serve-gateway",
            "--model",
            str(model),
            "-k",
            "3",
            "--verifiers",
            verifiers,
            "--proposers",
            proposers,
            "--ngram-on-proposers",
            *extra,
        ],
        log_dir,
        on=host,
    )
    cleanup.callback(gateway.stop)
    return gateway


def addresses(services: list[ServiceProcess]) -> str:
    return ",".join(s.address for s in services)
