"""Serve one long-lived bidirectional stream that carries calls for many sequences at once.

Each incoming message is handled concurrently (a slow sequence does not hold up the others); answers
go back in completion order, matched by call_id. When the stream ends, however it ends, `on_close`
runs: that is where a service releases every sequence the stream opened.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Awaitable, Callable, TypeVar

Request = TypeVar("Request")
Response = TypeVar("Response")


async def dispatch_stream(
    requests: AsyncIterator[Request],
    handle: Callable[[Request], Awaitable[Response]],
    on_close: Callable[[], Awaitable[None]],
) -> AsyncIterator[Response]:
    answers: asyncio.Queue = asyncio.Queue()
    done = object()
    in_flight: set[asyncio.Task] = set()

    async def answer(request: Request) -> None:
        await answers.put(await handle(request))

    async def read() -> None:
        try:
            async for request in requests:
                task = asyncio.create_task(answer(request))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
        finally:
            await answers.put(done)

    reader = asyncio.create_task(read())
    try:
        while (item := await answers.get()) is not done:
            yield item
    finally:
        reader.cancel()
        for task in list(in_flight):
            task.cancel()
        await on_close()
