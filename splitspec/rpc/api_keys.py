"""API keys on a gRPC server: every call but health checks carries `authorization: Bearer <key>`.

A call without a known key is refused with UNAUTHENTICATED before its handler runs. The SHA-256 of the
presented key is compared with hmac.compare_digest against that of every configured key: equal lengths,
every key tried, so the time taken tells neither how much of a guess was right nor how long a key is. Health checks stay open, so that load balancers and Kubernetes probes need no key.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Awaitable, Callable

import grpc

from splitspec.errors import SplitspecError

OPEN_METHODS_PREFIX = "/grpc.health.v1.Health/"
REFUSAL = "this gateway needs an API key: send the metadata 'authorization: Bearer <key>'"


def read_api_keys(keys: list[str], key_file: str | None) -> list[str]:
    """The keys given one by one (each may hold several, comma-separated, as SPLITSPEC_API_KEY does)
    and one per line of key_file (blank lines and lines starting with '#' skipped)."""
    found = [k.strip() for given in keys for k in given.split(",") if k.strip()]
    if key_file is not None:
        try:
            lines = Path(key_file).read_text().splitlines()
        except OSError as exc:
            raise SplitspecError(f"cannot read --api-key-file {key_file}: {exc.strerror}") from None
        file_keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not file_keys:
            raise SplitspecError(f"--api-key-file {key_file} holds no key")
        found += file_keys
    return found


def bearer_metadata(api_key: str | None) -> list[tuple[str, str]]:
    """The call metadata a client sends with `api_key`; none without one."""
    return [("authorization", f"Bearer {api_key}")] if api_key else []


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("ApiKeyInterceptor needs at least one key")
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    def authorized(self, metadata) -> bool:
        header = next((value for key, value in metadata or () if key == "authorization"), "")
        scheme, _, presented = (header.decode() if isinstance(header, bytes) else header).partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = hashlib.sha256(presented.strip().encode()).digest()
        matched = False
        for key_digest in self._digests:  # every key compared, whichever matches
            matched |= hmac.compare_digest(digest, key_digest)
        return matched

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHODS_PREFIX):
            return handler
        if self.authorized(details.invocation_metadata):
            return handler
        return _refusing(handler)


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that refuses the call."""

    async def refuse(request_or_iterator, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)

    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **serializers)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **serializers)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **serializers)
    return grpc.unary_unary_rpc_method_handler(refuse, **serializers)
