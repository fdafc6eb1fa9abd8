"""The delaying TCP proxy: each direction late by the delay, bytes intact and in order, no bandwidth
cap from the delay, the end of a stream passed on, and a real gRPC call through it."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from splitspec.netdelay import DelayProxy


@contextmanager
def echo_server():
    """Echoes every byte back; closes its side when the client ends its stream."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[:2]
    finally:
        listener.close()


def _connect(proxy: DelayProxy) -> socket.socket:
    host, port = proxy.address.split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return data


def _round_trip(sock: socket.socket) -> float:
    start = time.perf_counter()
    sock.sendall(b"ping")
    assert _recv_exactly(sock, 4) == b"ping"
    return time.perf_counter() - start


@pytest.mark.parametrize("delay_ms", [0, 3, 25])
def test_a_round_trip_takes_twice_the_delay(delay_ms):
    with echo_server() as target, DelayProxy(target, delay_ms / 1000) as proxy, _connect(proxy) as sock:
        _round_trip(sock)  # connect and warm up
        trips = sorted(_round_trip(sock) for _ in range(7))
    median = trips[3]
    assert 2 * delay_ms / 1000 <= median < 2 * delay_ms / 1000 + 0.010, trips


def test_bytes_arrive_intact_in_order_and_the_delay_caps_no_bandwidth():
    payload = bytes(range(256)) * 40_000  # 10 MB: hundreds of chunks
    delay = 0.05
    with echo_server() as target, DelayProxy(target, delay) as proxy, _connect(proxy) as sock:
        start = time.perf_counter()
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        echoed = _recv_exactly(sock, len(payload))
        elapsed = time.perf_counter() - start
        sender.join()
    assert echoed == payload
    assert 2 * delay <= elapsed < 2 * delay + 2.0, "chunks travel together: the delay is paid once, not per chunk"


def test_the_end_of_a_stream_is_passed_on_both_ways():
    with echo_server() as target, DelayProxy(target, 0.01) as proxy, _connect(proxy) as sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        assert _recv_exactly(sock, 10) == b"last words"
        assert sock.recv(10) == b"", "the server closed after our end reached it, and its end reached us"


def test_a_grpc_call_through_the_proxy_pays_the_delay_both_ways():
    server = grpc.server(ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with DelayProxy(("127.0.0.1", port), 0.02) as proxy, grpc.insecure_channel(proxy.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5)  # connects
            start = time.perf_counter()
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            elapsed = time.perf_counter() - start
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert 0.04 <= elapsed < 0.1
    finally:
        server.stop(None)


def test_a_negative_delay_is_refused():
    with pytest.raises(ValueError, match="delay must be >= 0"):
        DelayProxy(("127.0.0.1", 1), -0.001)
