"""Client side of a long-lived bidirectional stream that carries many concurrent calls.

Each call gets a call_id; the answer with the same id resolves it. If the stream breaks, every call
waiting on it fails with ConnectionError and the next call opens a fresh stream.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Callable

import grpc


class MultiplexedStream:
    def __init__(self, open_stream: Callable[[Any], Any], name: str) -> None:
        """open_stream(request_iterator) -> a grpc.aio stream-stream call."""
        self._open_stream = open_stream
        self._name = name
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._outgoing: asyncio.Queue | None = None
        self._reader: asyncio.Task | None = None
        self._call = None

    async def call(self, request, timeout: float | None = None):
        if self._reader is None or self._reader.done():
            self._open()
        request.call_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[request.call_id] = future
        await self._outgoing.put(request)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(request.call_id, None)

    def _open(self) -> None:
        queue: asyncio.Queue = asyncio.Queue()
        self._outgoing = queue

        async def requests():
            while (item := await queue.get()) is not None:
                yield item

        self._call = self._open_stream(requests())
        self._reader = asyncio.get_running_loop().create_task(self._read(self._call, queue))

    async def _read(self, call, queue: asyncio.Queue) -> None:
        error: BaseException = ConnectionError(f"{self._name}: stream closed")
        try:
            async for response in call:
                future = self._pending.get(response.call_id)
                if future is not None and not future.done():
                    future.set_result(response)
        except grpc.aio.AioRpcError as exc:
            error = ConnectionError(f"{self._name}: {exc.code().name}: {exc.details()}")
        except Exception as exc:
            error = ConnectionError(f"{self._name}: {exc}")
        finally:
            if self._outgoing is queue:
                self._outgoing = None
            for future in list(self._pending.values()):
                if not future.done():
                    future.set_exception(error)

    async def close(self) -> None:
        if self._outgoing is not None:
            await self._outgoing.put(None)
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            self._reader.cancel()
