"""What every splitspec gRPC server has: health checking, reflection, limits, keepalive, graceful stop."""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import dataclass
from typing import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from splitspec.rpc.tls import ServerTls

CONTRACT_VERSION = "splitspec.v1/1"


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 0
    max_message_bytes: int = 64 << 20
    keepalive_time_ms: int = 20_000
    keepalive_timeout_ms: int = 10_000
    grace_seconds: float = 10.0
    metrics_port: int | None = None
    """Where Prometheus scrapes /metrics (on `host`); None: no metrics."""
    otlp_traces_endpoint: str | None = None
    """Where spans go by OTLP; None: as the OTEL_EXPORTER_OTLP_* environment says (off when unset)."""
    tls: ServerTls | None = None
    """None: plaintext."""
    health_port: int | None = None
    """Where health checks are also answered, in plaintext and nothing else (on `host`), for probes that
    cannot present a client certificate; None: no such port."""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


NO_SHARED_PORT = ("grpc.so_reuseport", 0)
"""gRPC turns SO_REUSEPORT on by default, so that a second server started on a taken port binds it too
and the kernel splits connections between the two. Every splitspec server turns it off: a second one
on a taken port exits with an error instead."""


def channel_options(
    max_message_bytes: int = 64 << 20, keepalive_time_ms: int = 20_000, keepalive_timeout_ms: int = 10_000
) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


async def set_health(health_servicer: health.aio.HealthServicer, service_name: str, status: int) -> None:
    """The server's health ("") and its service's (e.g. splitspec.v1.Verifier), which always agree;
    status: a health_pb2.HealthCheckResponse status (SERVING, NOT_SERVING)."""
    await health_servicer.set("", status)
    await health_servicer.set(service_name, status)


async def serve(
    options: ServerOptions,
    service_names: list[str],
    register: Callable[[grpc.aio.Server, health.aio.HealthServicer], Awaitable[None]],
    name: str,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    idle: Callable[[], bool] | None = None,
    interceptors: list | None = None,
) -> None:
    """Run a server until SIGTERM or SIGINT, then stop taking calls and drain in-flight streams.

    `register` adds the servicers and sets the health status (set_health) once the service can do its job.
    `idle`: whether the service holds no more work; while draining, the server stops as soon as it
    says so (callers have moved their work away) rather than at the end of the grace period.
    """
    server = grpc.aio.server(
        interceptors=interceptors,
        options=channel_options(options.max_message_bytes, options.keepalive_time_ms, options.keepalive_timeout_ms)
        # clients (the gateway) ping at their keepalive interval to notice a cut link within seconds:
        # never answer their pings with GOAWAY "too_many_pings", which would break every stream
        + [("grpc.http2.min_ping_interval_without_data_ms", 5_000), ("grpc.http2.max_ping_strikes", 0)]
        + [NO_SHARED_PORT],
    )
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        service_names + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    port = _listen(server, options.address, name, options.tls)
    health_server = await _serve_health(options, health_servicer, name)
    await server.start()
    await register(server, health_servicer)
    security = "plaintext" if options.tls is None else "TLS" if options.tls.ca_file is None else "mutual TLS"
    print(f"splitspec {name}: listening on {options.host}:{port} ({security})", file=sys.stderr, flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print(f"splitspec {name}: draining (up to {options.grace_seconds:.0f} s)", file=sys.stderr, flush=True)
    await health_servicer.enter_graceful_shutdown()
    draining = asyncio.create_task(server.stop(options.grace_seconds))
    if idle is not None:
        while not draining.done() and not idle():
            await asyncio.sleep(0.1)
        if not draining.done():
            print(f"splitspec {name}: drained", file=sys.stderr, flush=True)
            await server.stop(0)
    await draining
    if health_server is not None:
        await health_server.stop(0)
    if on_stop is not None:
        await on_stop()
    print(f"splitspec {name}: stopped", file=sys.stderr, flush=True)


async def _serve_health(
    options: ServerOptions, health_servicer: health.aio.HealthServicer, name: str
) -> grpc.aio.Server | None:
    """A second, plaintext server on options.health_port that answers health checks only."""
    if options.health_port is None:
        return None
    server = grpc.aio.server(options=[NO_SHARED_PORT])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{options.host}:{options.health_port}"
    port = _listen(server, address, f"{name} (health checks)", None)
    await server.start()
    print(f"splitspec {name}: health checks on {options.host}:{port} (plaintext)", file=sys.stderr, flush=True)
    return server


def _listen(server: grpc.aio.Server, address: str, name: str, tls: ServerTls | None) -> int:
    """The port bound at `address`; a one-line exit when it cannot be bound (gRPC raises, or says 0)."""
    try:
        port = server.add_insecure_port(address) if tls is None else server.add_secure_port(address, tls.credentials())
    except RuntimeError:
        port = 0
    if port == 0:
        raise SystemExit(f"splitspec {name}: cannot listen on {address} (is the port in use?)")
    return port
