"""Service processes for the benchmarks: one splitspec server on a free loopback port, started,
waited for, stopped (and started again on the same port, as benchmarks/failover.py does)."""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from splitspec.entrypoints.service_processes import ServiceProcess, health_status, start_service
from splitspec.net_ports import free_port


@dataclass
class Pod:
    """One service process, which can be stopped and started again on the same port; its log,
    `<name>.log` in log_dir, is appended to across restarts."""

    name: str
    args: list[str]
    log_dir: Path
    port: int = field(default_factory=free_port)
    service: ServiceProcess | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def proc(self) -> subprocess.Popen | None:
        return None if self.service is None else self.service.proc

    def start(self) -> None:
        """Start it, without waiting (wait_serving does): pods start side by side."""
        log = self.log_dir / f"{self.name}.log"
        self.service = start_service(
            self.name, self.args, None, log_file=log, port=self.port, wait=False, grace_seconds=None
        )

    def wait_serving(self, timeout: float = 600) -> None:
        self.service.wait_serving(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        if self.service is not None:
            self.service.stop(sig, timeout)

    def health(self) -> int | None:
        """Its health status now, None when it does not answer."""
        return health_status(self.address, timeout=2)

    def rss_bytes(self) -> int:
        """Its resident memory now."""
        with open(f"/proc/{self.proc.pid}/status") as status:
            line = next(line for line in status if line.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024


def start_ngram_stack(
    model: str, log_dir: Path, started: list[Pod], verifier_args: list[str], gateway_args: list[str]
) -> tuple[Pod, Pod, Pod]:
    """A verifier, an n-gram proposer and a gateway over them, each serving before this returns. Every
    pod is appended to `started` as it starts, for the caller to stop, even when a later one fails."""
    verifier = Pod("verifier", ["serve-verifier", "--model", model, *verifier_args], log_dir)
    proposer = Pod("proposer", ["serve-proposer", "--method", "ngram"], log_dir)
    for pod in (verifier, proposer):
        started.append(pod)
        pod.start()
    for pod in (verifier, proposer):
        pod.wait_serving()
    gateway = Pod(
        "gateway",
        ["serve-gateway", "--model", model, "--verifiers", verifier.address, "--proposers", proposer.address]
        + gateway_args,
        log_dir,
    )
    started.append(gateway)
    gateway.start()
    gateway.wait_serving()
    return verifier, proposer, gateway
