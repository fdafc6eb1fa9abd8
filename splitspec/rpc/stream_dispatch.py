"""Serve one long-lived bidirectional stream that carries calls for many sequences at once.

Each incoming message is handled concurrently (a slow sequence does not hold up the others); answers
go back in completion order, matched by call_id. When the stream ends, however it ends, `on_close`
runs: that is where a service releases every sequence the stream opened.
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from typing import AsyncIterator, Awaitable, Callable, TypeVar

import grpc

from splitspec.errors import ServiceError

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


async def serve_sequence_stream(
    requests: AsyncIterator[Request],
    new_response: Callable[[Request], Response],
    handle: Callable[[Request, Response], Awaitable[None]],
    release: Callable[[str], Awaitable[None]],
    finish: Callable[[Request], Awaitable[None]] | None = None,
) -> AsyncIterator[Response]:
    """The verifier's and proposer's streams: a `release` message or the end of the stream frees a
    sequence; any other message goes to `handle`. A refusal is answered in the message (a
    ServiceError keeps its code, anything else is INTERNAL) and the stream stays open.
    finish: takes a `release` message instead of release(seq_id), to read what it says."""
    opened: set[str] = set()

    async def answer(request: Request) -> Response:
        response = new_response(request)
        try:
            if request.WhichOneof("kind") == "release":
                opened.discard(request.seq_id)
                await (finish(request) if finish is not None else release(request.seq_id))
                response.ack.SetInParent()
            else:
                await handle(request, response)
                opened.add(request.seq_id)
        except ServiceError as exc:
            response.error.code = exc.code.value[0]
            response.error.message = exc.message
        except Exception:
            # the traceback is for the operator's log; the caller hears only that it happened
            print(f"splitspec: unexpected error on a call for {request.seq_id!r}:", file=sys.stderr, flush=True)
            traceback.print_exc()
            response.error.code = grpc.StatusCode.INTERNAL.value[0]
            response.error.message = "internal error in the service (its log has the details)"
        return response

    async def release_all() -> None:
        for seq_id in list(opened):
            await release(seq_id)

    async for response in dispatch_stream(requests, answer, release_all):
        yield response
