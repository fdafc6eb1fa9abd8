"""OpenAI-compatible HTTP on the gateway: /v1/completions, /v1/chat/completions (streamed by server-sent
events or not), /v1/models, /health and /metrics, served by uvicorn on the gateway's own event loop so
that HTTP and gRPC requests share one GatewayServicer, its limits and its verifiers.

A request's choices run as separate sequences. A client that goes away mid-stream (or mid-wait for a
non-streamed answer) cancels them, and the verifier frees their KV blocks.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import grpc
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from gateway_svc.openai_protocol import (
    Choice,
    InvalidRequest,
    chat_choices,
    chat_logprobs,
    completion_choices,
    completion_logprobs,
    echoed_logprobs,
    new_id,
    returns_token_ids,
    usage,
    vllm_prompt_logprobs,
)
from gateway_svc.server import GatewayServicer
from gateway_svc.tool_calls import tool_calls
from splitspec.errors import ServiceError
from splitspec.rpc.api_keys import ApiKeyInterceptor
from splitspec_protos import splitspec_v1_pb2 as pb

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's documented default for /v1/completions
# a gRPC status as OpenAI's HTTP status and error type
HTTP_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
}


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(status: int, message: str, error_type: str, param: str | None = None, code: str | None = None):
    return JSONResponse(error_body(message, error_type, param, code), status_code=status)


def service_error_response(exc: ServiceError) -> JSONResponse:
    status, error_type = HTTP_ERRORS.get(exc.code, (500, "server_error"))
    return error_response(status, exc.message, error_type, code=exc.code.name.lower())


class OpenAIFront:
    """The HTTP routes over a GatewayServicer. `serving`: whether some verifier answers (health)."""

    def __init__(
        self,
        servicer: GatewayServicer,
        served_model: str,
        serving: Callable[[], bool],
        api_keys: list[str] | None = None,
        metrics: bool = False,
    ) -> None:
        self.servicer = servicer
        self.served_model = served_model
        self.serving = serving
        self.keys = ApiKeyInterceptor(api_keys) if api_keys else None
        self.metrics = metrics
        self.created = int(time.time())
        self.app = self._routes()

    def _routes(self) -> FastAPI:
        app = FastAPI(title="splitspec gateway", docs_url=None, redoc_url=None, openapi_url=None)

        @app.get("/health")
        async def health() -> Response:
            if self.serving():
                return JSONResponse({"status": "serving"})
            return error_response(503, "no verifier is reachable", "service_unavailable")

        @app.get("/metrics")
        async def metrics() -> Response:
            if not self.metrics:
                return error_response(404, "metrics are off: start the gateway with --metrics-port", "not_found")
            from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

            return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

        @app.get("/v1/models")
        async def models(request: Request) -> Response:
            if (refused := self._refusal(request)) is not None:
                return refused
            model = {"id": self.served_model, "object": "model", "created": self.created, "owned_by": "splitspec",
                     "max_model_len": self.servicer.core.max_model_len}  # fmt: skip
            return JSONResponse({"object": "list", "data": [model]})

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            return await self._serve(request, chat=False)

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request) -> Response:
            return await self._serve(request, chat=True)

        return app

    def _refusal(self, request: Request) -> Response | None:
        if self.keys is None or self.keys.authorized([("authorization", request.headers.get("authorization", ""))]):
            return None
        return error_response(
            401, "this gateway needs an API key: send the header 'Authorization: Bearer <key>'",
            "authentication_error", code="invalid_api_key",
        )  # fmt: skip

    async def _serve(self, request: Request, chat: bool) -> Response:
        if (refused := self._refusal(request)) is not None:
            return refused
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error_response(400, "the request body is not JSON", "invalid_request_error")
        model = body.get("model") if isinstance(body, dict) else None
        if model is not None and model != self.served_model:
            return error_response(
                404, f"the model {model!r} does not exist here; this gateway serves {self.served_model!r}",
                "invalid_request_error", "model", "model_not_found",
            )  # fmt: skip
        try:
            if chat:
                limit = self.servicer.limits.max_tokens
                choices = chat_choices(body, limit if limit is not None else self.servicer.core.max_model_len)
            else:
                choices = completion_choices(body, COMPLETION_DEFAULT_MAX_TOKENS)
            usage_in_stream = _usage_in_stream(body.get("stream_options"))
            token_ids = returns_token_ids(body, default=self.servicer.core.tokenizer is None)
        except InvalidRequest as exc:
            return error_response(400, str(exc), "invalid_request_error", exc.param)
        answer = _Answer(
            new_id("chatcmpl" if chat else "cmpl"),
            self.served_model,
            chat,
            choices,
            token_ids,
            self._token_text,
            self._prompt_ids,
        )
        if body.get("stream"):
            return await self._stream(request, answer, usage_in_stream)
        return await self._complete(request, answer)

    def _prompt_ids(self, request: pb.GenerateRequest) -> list[int]:
        """A completion's prompt as the gateway tokenizes (and truncates) it."""
        tokenizer = self.servicer.core.tokenizer
        ids = list(request.prompt_token_ids) if request.prompt_token_ids else tokenizer.encode(request.prompt)
        keep = request.sampling.truncate_prompt_tokens if request.sampling.HasField("truncate_prompt_tokens") else 0
        return ids[-keep:] if keep else ids

    def _token_text(self, token: int) -> str:
        """A token as logprobs name it: its text, or vLLM's "token_id:N" for a model without a tokenizer."""
        tokenizer = self.servicer.core.tokenizer
        return tokenizer.decode([token]) if tokenizer is not None else f"token_id:{token}"

    async def _complete(self, request: Request, answer: _Answer) -> Response:
        """Every choice to its end, then one JSON answer; a client that leaves cancels them."""
        collecting = asyncio.ensure_future(self._collect(answer.choices))
        while not collecting.done():
            await asyncio.wait({collecting}, timeout=0.5)
            if not collecting.done() and await request.is_disconnected():
                collecting.cancel()
                await asyncio.gather(collecting, return_exceptions=True)
                return Response(status_code=499)
        try:
            collecting.result()
        except ServiceError as exc:
            return service_error_response(exc)
        return JSONResponse(answer.whole())

    async def _collect(self, choices: list[Choice]) -> None:
        async for choice, response in self._merged(choices):
            choice.text += response.text
            answer_received(choice, response)

    async def _stream(self, request: Request, answer: _Answer, usage_in_stream: UsageInStream) -> Response:
        """Server-sent events; an error before the first token is an HTTP error, after it an event."""
        events = self._merged(answer.choices)
        try:
            first = await anext(events, None)
        except ServiceError as exc:
            return service_error_response(exc)

        async def sse() -> AsyncIterator[str]:
            try:
                if answer.chat:
                    for choice in answer.choices:
                        yield _event(answer.chunk(choice, {"role": "assistant", "content": ""}, None, usage_in_stream))
                pending = first
                while pending is not None:
                    choice, response = pending
                    answer_received(choice, response)
                    finish = response.finish_reason or None
                    if choice.tool_mode is not None:  # calls go out whole, once the answer is complete
                        choice.text += response.text
                        if finish:
                            message = answer.message(choice)
                            delta = {key: message[key] for key in ("content", "tool_calls") if key in message}
                            if "tool_calls" in delta:
                                delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(delta["tool_calls"])]
                            yield _event(answer.chunk(choice, delta, answer.finish_reason(choice), usage_in_stream))
                    # tokens whose text is held back still go out where their ids or logprobs are asked for
                    elif response.text or finish or ((answer.token_ids or response.logprobs) and response.token_ids):
                        delta = {"content": response.text} if answer.chat else response.text
                        chunk = answer.chunk(choice, delta, finish, usage_in_stream, list(response.logprobs))
                        if answer.token_ids:
                            chunk["choices"][0]["token_ids"] = list(response.token_ids)
                        yield _event(chunk)
                    pending = await anext(events, None)
                if usage_in_stream.at_end:
                    yield _event(answer.usage_chunk())
                yield "data: [DONE]\n\n"
            except ServiceError as exc:
                _, error_type = HTTP_ERRORS.get(exc.code, (500, "server_error"))
                yield _event(error_body(exc.message, error_type, code=exc.code.name.lower()))
                yield "data: [DONE]\n\n"
            finally:
                await events.aclose()

        return StreamingResponse(sse(), media_type="text/event-stream")

    async def _merged(self, choices: list[Choice]) -> AsyncIterator[tuple[Choice, pb.GenerateResponse]]:
        """Every choice's responses as they come; the first error ends all of them."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(choice: Choice) -> None:
            try:
                async for response in self.servicer.responses(choice.request):
                    await queue.put((choice, response, None))
                await queue.put((choice, None, None))
            except ServiceError as exc:
                await queue.put((choice, None, exc))

        tasks = [asyncio.ensure_future(pump(choice)) for choice in choices]
        try:
            running = len(tasks)
            while running:
                choice, response, error = await queue.get()
                if error is not None:
                    raise error
                if response is None:
                    running -= 1
                else:
                    yield choice, response
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def answer_received(choice: Choice, response: pb.GenerateResponse) -> None:
    choice.token_ids += response.token_ids
    choice.logprobs += response.logprobs
    choice.prompt_logprobs += response.prompt_logprobs
    if response.HasField("usage"):
        choice.usage = response.usage
    if response.finish_reason:
        choice.finish_reason = response.finish_reason
        choice.speculation = response.speculation


@dataclass(frozen=True)
class UsageInStream:
    """OpenAI's stream_options.include_usage: a last chunk with the usage (and "usage": null in the
    others); vLLM's continuous_usage_stats too: the usage so far in every chunk."""

    at_end: bool = False
    every_chunk: bool = False


def _usage_in_stream(options) -> UsageInStream:
    if options is None:
        return UsageInStream()
    known = {"include_usage", "continuous_usage_stats"}
    if not isinstance(options, dict) or set(options) - known:
        raise InvalidRequest("stream_options may hold include_usage and continuous_usage_stats", "stream_options")
    for name, value in options.items():
        if value is not None and not isinstance(value, bool):
            raise InvalidRequest(f"stream_options.{name} must be true or false", "stream_options")
    at_end = bool(options.get("include_usage"))
    return UsageInStream(at_end, at_end and bool(options.get("continuous_usage_stats")))


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


class _Answer:
    """One request's answer in OpenAI's shapes: the whole object, or its stream chunks."""

    def __init__(
        self,
        answer_id: str,
        model: str,
        chat: bool,
        choices: list[Choice],
        token_ids: bool,
        token_text: Callable[[int], str],
        prompt_ids: Callable[[pb.GenerateRequest], list[int]],
    ) -> None:
        self.id = answer_id
        self.model = model
        self.chat = chat
        self.choices = choices
        self.token_ids = token_ids  # vLLM's return_token_ids
        self.token_text = token_text  # how logprobs name a token
        self.prompt_ids = prompt_ids  # a completion's prompt tokens, for echo
        self.created = int(time.time())

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self) -> dict:
        answer = self._whole()
        if self.token_ids:
            for part, choice in zip(answer["choices"], self.choices):
                part["token_ids"] = choice.token_ids
        return answer

    def _logprobs(self, choice: Choice, entries: list[pb.TokenLogprobs], text_offset: int = 0) -> dict | None:
        """The choice's logprobs object for these of its tokens; None where it did not ask for them."""
        if not choice.request.sampling.HasField("logprobs"):
            return None
        top = choice.request.sampling.logprobs
        if self.chat:
            return chat_logprobs(entries, top, self.token_text)
        return completion_logprobs(entries, top, self.token_text, text_offset)

    def message(self, choice: Choice) -> dict:
        """A chat choice's message: its content, or the tool calls it makes (gateway_svc.tool_calls)."""
        calls = tool_calls(choice.tool_mode, choice.text) if choice.tool_mode is not None else None
        if calls is None:
            return {"role": "assistant", "content": choice.text}
        return {"role": "assistant", "content": None, "tool_calls": calls}

    @staticmethod
    def finish_reason(choice: Choice) -> str | None:
        """OpenAI's: "tool_calls" where the model chose the calls ("required"); a named function's call
        ends with "stop"."""
        required = choice.tool_mode is not None and choice.tool_mode.function is None
        return "tool_calls" if required and choice.finish_reason == "stop" else choice.finish_reason

    def _whole(self) -> dict:
        if self.chat:
            choices = [
                {"index": c.index, "message": self.message(c), "logprobs": self._logprobs(c, c.logprobs),
                 "finish_reason": self.finish_reason(c)}
                for c in self.choices
            ]  # fmt: skip
            return {**self._head("chat.completion"), "choices": choices, "usage": usage(self.choices)}
        choices = []
        for c in self.choices:
            part = {"index": c.index, "text": c.text, "logprobs": self._logprobs(c, c.logprobs),
                    "finish_reason": c.finish_reason}  # fmt: skip
            if c.echo:
                self._echo(c, part)
            if c.request.sampling.HasField("prompt_logprobs"):
                part["prompt_logprobs"] = vllm_prompt_logprobs(c.prompt_logprobs, self.token_text)
            choices.append(part)
        return {**self._head("text_completion"), "choices": choices, "usage": usage(self.choices)}

    def _text(self, token_ids: list[int]) -> str:
        return "".join(self.token_text(t) for t in token_ids)

    def _echo(self, choice: Choice, part: dict) -> int:
        """The prompt before the completion's text, and before its logprobs where they are asked for;
        returns how far the echo moves the completion's text offsets."""
        prompt_ids = self.prompt_ids(choice.request)
        truncated = choice.request.sampling.HasField("truncate_prompt_tokens")
        echoed = choice.request.prompt if choice.request.prompt and not truncated else self._text(prompt_ids)
        part["text"] = echoed + part["text"]
        if part["logprobs"] is None:
            return 0
        top = choice.request.sampling.logprobs
        head = echoed_logprobs(prompt_ids[0], choice.prompt_logprobs, top, self.token_text)
        tail = part["logprobs"]
        shift = sum(len(t) for t in head["tokens"])
        tail["text_offset"] = [offset + shift for offset in tail["text_offset"]]
        part["logprobs"] = {key: head[key] + tail[key] for key in head}
        return shift

    def chunk(
        self,
        choice: Choice,
        delta,
        finish_reason: str | None,
        usage_in_stream: UsageInStream,
        entries: list[pb.TokenLogprobs] | None = None,
    ) -> dict:
        """entries: the logprobs of the tokens this chunk carries, the last of the choice's so far. An
        echoed completion's first chunk starts with its prompt (and the prompt's logprobs), as vLLM's."""
        echo_now = not self.chat and choice.echo and choice.echo_shift is None
        logprobs = None
        if entries or echo_now:
            earlier = choice.logprobs[: len(choice.logprobs) - len(entries or [])]
            offset = sum(len(self.token_text(e.token_ids[0])) for e in earlier) + (choice.echo_shift or 0)
            logprobs = self._logprobs(choice, entries or [], offset)
        if self.chat:
            part = {"index": choice.index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
            chunk = {**self._head("chat.completion.chunk"), "choices": [part]}
        else:
            part = {"index": choice.index, "text": delta, "logprobs": logprobs, "finish_reason": finish_reason}
            chunk = {**self._head("text_completion"), "choices": [part]}
            if echo_now:
                choice.echo_shift = self._echo(choice, part)
        if usage_in_stream.at_end:
            chunk["usage"] = usage(self.choices) if usage_in_stream.every_chunk else None
        return chunk

    def usage_chunk(self) -> dict:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(kind), "choices": [], "usage": usage(self.choices)}


class _QuietServer(uvicorn.Server):
    """uvicorn inside the gateway's loop: the gateway's own SIGTERM handling drains and stops it."""

    def capture_signals(self):
        from contextlib import nullcontext

        return nullcontext()


class HttpServer:
    """uvicorn serving an OpenAIFront on (host, port), started and stopped with the gRPC server."""

    def __init__(self, front: OpenAIFront, host: str, port: int, cert_file: str | None, key_file: str | None) -> None:
        config = uvicorn.Config(
            front.app, host=host, port=port, lifespan="off", log_level="warning", access_log=False,
            ssl_certfile=cert_file, ssl_keyfile=key_file, timeout_graceful_shutdown=5,
        )  # fmt: skip
        self.server = _QuietServer(config)
        self.address = f"{host}:{port}"
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.task = asyncio.ensure_future(self.server.serve())
        while not self.server.started:
            if self.task.done():
                raise SystemExit(f"splitspec gateway: cannot serve HTTP on {self.address} (is the port in use?)")
            await asyncio.sleep(0.05)
        scheme = "https" if self.server.config.ssl_certfile else "http"
        print(f"splitspec gateway: OpenAI-compatible HTTP on {scheme}://{self.address}/v1", file=sys.stderr, flush=True)

    async def stop(self) -> None:
        if self.task is not None:
            self.server.should_exit = True
            await asyncio.gather(self.task, return_exceptions=True)
