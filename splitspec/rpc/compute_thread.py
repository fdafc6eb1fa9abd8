"""The one thread that runs a service process's tensor work.

PyTorch's CPU ops run on an OpenMP thread team that belongs to the calling thread. Once a second
thread of the process has run parallel ops, there are more OpenMP threads than cores, and libgomp
then stops spinning between ops: every op wakes sleeping threads, which costs about 10 ms per verify
pass of the default model (docs/benchmarks.md, "What changed the numbers").
So model loading, calibration and every batch of a service run on this one thread.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def compute_executor() -> ThreadPoolExecutor:
    """The process's single compute thread (created on first use, never shut down)."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        return _executor


def run_on_compute_thread(fn: Callable[..., T], *args) -> T:
    """Run fn(*args) on the compute thread and wait for it (from any thread but that one)."""
    return compute_executor().submit(fn, *args).result()
