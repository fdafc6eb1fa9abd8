"""Service processes started from Python, for the bench CLI, the benchmarks and the tests:
`python -m splitspec <command> ... --host H --port P`, waited for until its gRPC health says SERVING,
stopped by SIGTERM (a drain) and then, if it outlives the wait, killed. A start that fails stops what
it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitspec.net_ports import free_port

SERVING = health_pb2.HealthCheckResponse.SERVING
LOG_TAIL_CHARS = 4000
"""How much of a log an error quotes."""


class Host(Protocol):
    """A host of its own for a process (tests/separate_hosts.py: a network namespace)."""

    ip: str

    def command(self, argv: list[str]) -> list[str]:
        """argv run on this host."""
        ...


def bound_address(proc: subprocess.Popen, log: Path, what: str, timeout: float, offset: int = 0) -> str:
    """host:port from the `splitspec NAME: <what> HOST:PORT` line a server prints once it has bound;
    offset: where in the log this run's output starts (a log appended to across restarts)."""
    pattern = re.compile(rf"^splitspec [^:]+: {re.escape(what)} (\S+:\d+) ", re.M)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = pattern.search(_read(log, offset))
        if found:
            return found.group(1)
        if proc.poll() is not None:
            raise RuntimeError(f"{log.name}: exited with {proc.returncode} before binding:\n{_tail(log)}")
        time.sleep(0.05)
    raise TimeoutError(f"{log.name}: no {what!r} line after {timeout} s:\n{_tail(log)}")


def health_status(
    address: str, service: str = "", credentials: grpc.ChannelCredentials | None = None, timeout: float = 1
) -> int | None:
    """Its health now (a health_pb2.HealthCheckResponse status), None when it does not answer;
    credentials: for a server that serves TLS; None: plaintext."""
    channel = grpc.insecure_channel(address) if credentials is None else grpc.secure_channel(address, credentials)
    with channel:
        try:
            request = health_pb2.HealthCheckRequest(service=service)
            return health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout).status
        except grpc.RpcError:
            return None


@dataclass
class ServiceProcess:
    name: str
    address: str
    proc: subprocess.Popen
    log: Path
    health_address: str | None = None
    """Where it answers health checks in plaintext, when not at `address` (--health-port)."""
    metrics_port: int | None = None
    """Where it serves /metrics on its host (--metrics-port), when it does."""
    log_offset: int = 0
    """Where in its log this run's output starts (a log appended to across restarts)."""

    def logs(self) -> str:
        return _tail(self.log)

    def wait_serving(self, timeout: float) -> None:
        """Until it has said it listens at its address and its health says SERVING (not another
        process's, on a fixed port that was taken); raises if it exits first or the timeout passes."""
        listening = f": listening on {self.address} "
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.logs()}")
            bound = listening in _read(self.log, self.log_offset)
            if bound and health_status(self.health_address or self.address) == SERVING:
                return
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not SERVING after {timeout} s:\n{self.logs()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        """Send sig (SIGTERM: drain), and kill it if it has not exited within the timeout."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_service(
    name: str,
    args: list[str],
    log_dir: Path | None,
    *,
    log_file: Path | None = None,
    wait: bool = True,
    timeout: float = 180.0,
    grace_seconds: float | None = 5,
    on: Host | None = None,
    port: int = 0,
    health_port: bool = False,
    metrics: bool = False,
    env: dict[str, str] | None = None,
    launcher: list[str] | None = None,
) -> ServiceProcess:
    """`python -m splitspec <args> --host H --port P` on loopback, or on a host of its own (`on`).

    port: 0 (the server binds a free one, read back from its log) or a fixed one (known at once: a
    process restarted on its port, a stack whose ports are given to each other);
    log_dir: where its log is written, a fresh file (None: the system's temporary directory);
    log_file: appended to instead (one log across restarts);
    wait: until it is SERVING (else only until its port is known);
    grace_seconds: its drain time on SIGTERM (None: the server's default);
    health_port: with a plaintext health port too (the one to wait on when the main port needs TLS);
    metrics: serving /metrics on a free port (ServiceProcess.metrics_port);
    env: set in its environment besides this process's; launcher: what runs the CLI's arguments (default
    `python -m splitspec`)."""
    host_ip = "127.0.0.1" if on is None else on.ip
    if log_file is None:
        log_file = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log", dir=log_dir)[1])
    offset = log_file.stat().st_size if log_file.exists() else 0
    argv = [*(launcher or [sys.executable, "-m", "splitspec"]), *args, "--host", host_ip, "--port", str(port)]
    if grace_seconds is not None:
        argv += ["--grace-seconds", str(grace_seconds)]
    if health_port:
        argv += ["--health-port", "0"]
    metrics_port = free_port() if metrics else None
    if metrics_port is not None:
        argv += ["--metrics-port", str(metrics_port)]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", **(env or {}))
    with open(log_file, "a") as out:
        proc = subprocess.Popen(argv if on is None else on.command(argv), stdout=out, stderr=subprocess.STDOUT, env=env)
    service = ServiceProcess(name, f"{host_ip}:{port}", proc, log_file, metrics_port=metrics_port, log_offset=offset)
    try:
        if not port:
            service.address = bound_address(proc, log_file, "listening on", timeout, offset)
        if health_port:
            service.health_address = bound_address(proc, log_file, "health checks on", timeout, offset)
        if wait:
            service.wait_serving(timeout)
    except BaseException:
        service.stop()
        raise
    return service


def _read(log: Path, offset: int = 0) -> str:
    with open(log, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _tail(log: Path) -> str:
    return _read(log)[-LOG_TAIL_CHARS:]
