"""A TCP proxy that delays every byte by a fixed one-way latency: a network between pods, on one host.

There is no `tc netem` on the machines this project is tested on, so `splitspec up --network-delay-ms`
and `splitspec bench --network-delay-ms` put one of these on each link between services. Bytes read
from one side at time t are written to the other at t + delay, in order; reading goes on meanwhile,
so the delay adds latency, not a bandwidth limit (as a long link with a wide window would). Threads
rather than asyncio: a thread's sleep keeps sub-millisecond precision, where the event loop's
timers round up to the next millisecond.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable

_CHUNK = 1 << 16


class DelayProxy:
    """Listens on host:port (port 0: a free one) and forwards each connection to `target`."""

    def __init__(self, target: tuple[str, int], delay_s: float, host: str = "127.0.0.1", port: int = 0) -> None:
        if delay_s < 0:
            raise ValueError(f"delay must be >= 0, got {delay_s}")
        self.target = target
        self.delay_s = delay_s
        self._listener = socket.create_server((host, port))
        self._stopped = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._accepting = threading.Thread(target=self._accept, name="delay-proxy-accept", daemon=True)

    @property
    def address(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"{host}:{port}"

    def start(self) -> "DelayProxy":
        self._accepting.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        _close(self._listener)  # shutdown wakes the thread blocked in accept(); close alone does not
        with self._lock:
            for sock in self._sockets:
                _close(sock)
        self._accepting.join(timeout=5)

    def __enter__(self) -> "DelayProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed by stop()
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets.update((client, upstream))
            remaining = [2]  # directions still open; the last to end closes the connection

            def direction_done(pair=(client, upstream), remaining=remaining) -> None:
                with self._lock:
                    remaining[0] -= 1
                    if remaining[0]:
                        return
                    self._sockets.difference_update(pair)
                for sock in pair:
                    _close(sock)

            self._pipe(client, upstream, direction_done)
            self._pipe(upstream, client, direction_done)

    def _pipe(self, source: socket.socket, sink: socket.socket, done: Callable[[], None]) -> None:
        """One direction: a reader stamps each chunk with its delivery time, a writer waits for it."""
        chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

        def read() -> None:
            while True:
                try:
                    data = source.recv(_CHUNK)
                except OSError:
                    data = b""
                chunks.put((time.monotonic() + self.delay_s, data))
                if not data:
                    return

        def write() -> None:
            while True:
                deliver_at, data = chunks.get()
                pause = deliver_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                if not data:  # the source closed: pass the end on
                    _shutdown_write(sink)
                    return done()
                try:
                    sink.sendall(data)
                except OSError:
                    _close(source)
                    return done()

        threading.Thread(target=read, name="delay-proxy-read", daemon=True).start()
        threading.Thread(target=write, name="delay-proxy-write", daemon=True).start()


def _shutdown_write(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
