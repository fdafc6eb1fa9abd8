"""Free loopback ports for listeners that are told their port rather than binding port 0 and saying
which one they got: a tensor-parallel group's rendezvous, a stack's fixed ports, /metrics, HTTP."""

from __future__ import annotations

import socket
import threading

_handed_out: set[int] = set()
_lock = threading.Lock()


def free_port() -> int:
    """A loopback port free now and never handed out before by this process: the kernel may offer a
    port again as soon as its probe socket closes, before the first taker has bound it."""
    with _lock:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port
