"""A small synchronous client of the Gateway service, used by `splitspec generate --gateway`."""

from __future__ import annotations

from typing import Iterator

import grpc
from google.protobuf.struct_pb2 import Struct

from splitspec.rpc import wire
from splitspec.rpc.api_keys import bearer_metadata
from splitspec.rpc.tls import ClientTls
from splitspec.structured_outputs import StructuredOutputsParams
from splitspec_protos import splitspec_v1_pb2 as pb
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc


def build_request(
    prompt: str | list[int] | list[dict],
    *,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    max_tokens: int | None = None,
    stop: list[str] | None = None,
    stop_token_ids: list[int] | None = None,
    ignore_eos: bool = False,
    seed: int | None = None,
    num_speculative_tokens: int | None = None,
    session_id: str = "",
    min_tokens: int = 0,
    include_stop_str_in_output: bool = False,
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
    truncate_prompt_tokens: int | None = None,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    repetition_penalty: float | None = None,
    structured_outputs: StructuredOutputsParams | None = None,
    min_p: float = 0.0,
    logit_bias: dict[int, float] | None = None,
    skip_special_tokens: bool | None = None,
    spaces_between_special_tokens: bool | None = None,
) -> pb.GenerateRequest:
    """prompt: text, token ids, or a conversation ([{"role": ..., "content": ...}]) that the gateway puts
    through the model's chat template. session_id: keeps related requests on one proposer pod."""
    request = pb.GenerateRequest(session_id=session_id)
    if isinstance(prompt, str):
        request.prompt = prompt
    elif prompt and isinstance(prompt[0], dict):
        request.messages.extend(pb.ChatMessage(role=m["role"], content=m["content"]) for m in prompt)
    else:
        request.prompt_token_ids.extend(prompt)
    s = request.sampling
    for name, value in (
        ("temperature", temperature),
        ("top_p", top_p),
        ("top_k", top_k),
        ("max_tokens", max_tokens),
        ("seed", seed),
        ("logprobs", logprobs),
        ("prompt_logprobs", prompt_logprobs),
        ("truncate_prompt_tokens", truncate_prompt_tokens),
        ("repetition_penalty", repetition_penalty),
        ("skip_special_tokens", skip_special_tokens),
        ("spaces_between_special_tokens", spaces_between_special_tokens),
    ):
        if value is not None:
            setattr(s, name, value)
    s.stop.extend(stop or [])
    s.stop_token_ids.extend(stop_token_ids or [])
    s.ignore_eos = ignore_eos
    s.min_tokens = min_tokens
    s.include_stop_str_in_output = include_stop_str_in_output
    s.presence_penalty = presence_penalty
    s.min_p = min_p
    s.logit_bias.update(logit_bias or {})
    if structured_outputs is not None:
        s.structured_outputs.CopyFrom(wire.structured_outputs_to_proto(structured_outputs))
    s.frequency_penalty = frequency_penalty
    if num_speculative_tokens is not None:
        overrides = Struct()
        overrides.update({"num_speculative_tokens": num_speculative_tokens})
        request.speculation.CopyFrom(overrides)
    return request


def stream_generate(
    address: str,
    request: pb.GenerateRequest,
    timeout: float | None = None,
    api_key: str | None = None,
    tls: ClientTls | None = None,
) -> Iterator[pb.GenerateResponse]:
    """api_key: sent as 'authorization: Bearer <key>', for a gateway started with --api-key.
    tls: for a gateway that serves TLS; None: plaintext."""
    channel = grpc.insecure_channel(address) if tls is None else grpc.secure_channel(address, tls.credentials())
    with channel:
        yield from pb_grpc.GatewayStub(channel).Generate(request, timeout=timeout, metadata=bearer_metadata(api_key))
