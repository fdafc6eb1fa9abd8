"""Service processes for the benchmarks: one splitspec server on a free loopback port, started,
waited for, stopped (and started again on the same port, as benchmarks/failover.py does)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Pod:
    """One service process, which can be stopped and started again on the same port."""

    name: str
    args: list[str]
    log_dir: Path
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [sys.executable, "-m", "splitspec", *self.args, "--host", "127.0.0.1", "--port", str(self.port)]
        log = open(self.log_dir / f"{self.name}.log", "a")
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    def wait_serving(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise SystemExit(f"{self.name} exited with {self.proc.returncode}; see {self.log_dir}")
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise SystemExit(f"{self.name} is not serving after {timeout} s; see {self.log_dir}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def health(self) -> int | None:
        """Its health status now, None when it does not answer."""
        with grpc.insecure_channel(self.address) as channel:
            try:
                return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status
            except grpc.RpcError:
                return None

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
