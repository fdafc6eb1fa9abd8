"""MicroBatcher: calls within a window form one batch, run on the process's one compute thread."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from splitspec.rpc.compute_thread import run_on_compute_thread
from splitspec.rpc.micro_batcher import RETRY, MicroBatcher


def test_batches_run_on_the_compute_thread_that_loaded_the_model() -> None:
    loading_thread = run_on_compute_thread(threading.get_ident)
    batch_threads: list[int] = []

    def run_batch(items: list[int]) -> list[int]:
        batch_threads.append(threading.get_ident())
        return [i * 2 for i in items]

    async def main() -> list[int]:
        batcher = MicroBatcher(run_batch, window_s=0.05, expected=lambda: 3)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(3)))
        await batcher.close()
        return results

    assert asyncio.run(main()) == [0, 2, 4]
    assert batch_threads == [loading_thread]  # one batch, on the same thread
    assert loading_thread != threading.get_ident()


def test_retry_joins_the_next_batch_and_errors_fail_only_their_call() -> None:
    batches: list[list[str]] = []

    def run_batch(items: list[str]) -> list:
        batches.append(list(items))
        out: list = []
        for item in items:
            if item == "late" and len(batches) == 1:
                out.append(RETRY)
            elif item == "bad":
                out.append(ValueError("bad item"))
            else:
                out.append(item.upper())
        return out

    async def main() -> tuple:
        batcher = MicroBatcher(run_batch, window_s=0.05, expected=lambda: 3)
        batcher.start()
        results = await asyncio.gather(
            batcher.submit("ok"), batcher.submit("late"), batcher.submit("bad"), return_exceptions=True
        )
        await batcher.close()
        return results

    ok, late, bad = asyncio.run(main())
    assert (ok, late) == ("OK", "LATE")
    assert isinstance(bad, ValueError)
    assert batches[0] == ["ok", "late", "bad"] and batches[1] == ["late"]


async def until_pending(batcher: MicroBatcher, n: int) -> None:
    while batcher.num_pending < n:
        await asyncio.sleep(0)


def test_close_fails_waiting_calls() -> None:
    async def main() -> None:
        batcher = MicroBatcher(lambda items: items, window_s=10.0, expected=lambda: 2)
        batcher.start()
        waiting = asyncio.ensure_future(batcher.submit(1))
        await until_pending(batcher, 1)
        await batcher.close()
        with pytest.raises(RuntimeError, match="shutting down"):
            await waiting

    asyncio.run(main())


def test_a_straggler_joins_the_batch_instead_of_falling_out_of_step() -> None:
    """After a 2 s batch, a call arriving 20 ms after another (window 2 ms) still joins its batch:
    the batcher waits up to a quarter of the last batch's run time (0.5 s here) for every expected call."""
    batches: list[list[str]] = []

    def run_batch(items: list[str]) -> list[str]:
        batches.append(list(items))
        if len(batches) == 1:
            time.sleep(2.0)
        return items

    async def main() -> None:
        batcher = MicroBatcher(run_batch, window_s=0.002, expected=lambda: 2)
        batcher.start()
        await asyncio.gather(batcher.submit("a0"), batcher.submit("b0"))
        first = asyncio.ensure_future(batcher.submit("a1"))
        await until_pending(batcher, 1)
        await asyncio.sleep(0.02)  # the gap: ten windows, well inside the straggler wait
        await asyncio.gather(first, batcher.submit("b1"))
        await batcher.close()

    asyncio.run(main())
    assert batches == [["a0", "b0"], ["a1", "b1"]]


def test_waiting_for_stragglers_sleeps_instead_of_polling() -> None:
    """A call alone in a 1 s window costs the event loop's thread almost no CPU (0.5 ms polling cost
    about 60 ms on this machine; the event wait costs about 1 ms)."""

    async def main() -> float:
        batcher = MicroBatcher(lambda items: items, window_s=1.0, expected=lambda: 2)
        batcher.start()
        started = time.thread_time()
        await batcher.submit(1)
        cpu = time.thread_time() - started
        await batcher.close()
        return cpu

    assert asyncio.run(main()) < 0.02
