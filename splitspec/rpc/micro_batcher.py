"""Gather calls that arrive within a short window and run them as one batch on the compute thread.

The process's compute thread is the only one that touches the model and its cache, so
`run_exclusive` work (releasing a sequence, say) is serialized with the batches and never races them.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Generic, TypeVar

from splitspec.rpc.compute_thread import compute_executor

Item = TypeVar("Item")
Result = TypeVar("Result")

WAIT_FRACTION = 0.25
"""Longest wait for stragglers, as a share of the last batch's run time."""

RETRY = object()
"""What run_batch returns for a call that did not fit this batch: it joins the next one."""


class MicroBatcher(Generic[Item, Result]):
    def __init__(
        self,
        run_batch: Callable[[list[Item]], list[Result | BaseException]],
        window_s: float = 0.002,
        expected: Callable[[], int] | None = None,
    ) -> None:
        """`expected()` says how many calls could join a batch; once that many are waiting, go at once.
        Until then wait the window, or a quarter of the last batch's run time if that is longer: calls
        that miss a batch fall out of step with the others and get batches of their own from then on,
        which costs far more than the wait."""
        self._run_batch = run_batch
        self._window_s = window_s
        self._last_batch_s = 0.0
        self._expected = expected
        self._pending: list[tuple[Item, asyncio.Future]] = []
        self._wakeup = asyncio.Event()
        self._executor = compute_executor()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for _, future in self._pending:
            if not future.done():
                future.set_exception(RuntimeError("server is shutting down"))
        await self.run_exclusive(lambda: None)  # the batch in flight, if any, has finished

    @property
    def num_pending(self) -> int:
        """Calls waiting for the next batch."""
        return len(self._pending)

    async def submit(self, item: Item) -> Result:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._wakeup.set()
        return await future

    async def run_exclusive(self, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _gather_stragglers(self, deadline: float) -> None:
        """Sleep until the deadline or until every expected call is waiting, waking only when a call
        arrives (no polling: on two cores a spinning wait takes time from the model)."""
        loop = asyncio.get_running_loop()
        while self._expected is None or len(self._pending) < self._expected():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            await self._gather_stragglers(loop.time() + max(self._window_s, WAIT_FRACTION * self._last_batch_s))
            batch, self._pending = self._pending, []
            self._wakeup.clear()
            live = [(item, future) for item, future in batch if not future.cancelled()]
            if not live:
                continue
            started = loop.time()
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, [item for item, _ in live])
            except Exception as exc:  # a failed batch fails its calls, not the server
                results = [exc] * len(live)
            self._last_batch_s = loop.time() - started
            for (item, future), result in zip(live, results):
                if future.done():
                    continue
                if result is RETRY:
                    self._pending.append((item, future))
                    self._wakeup.set()
                elif isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
