"""Turn a GenerateRequest into a prompt, sampling parameters and K, or refuse it with INVALID_ARGUMENT."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import grpc

from gateway_svc.proposer_affinity import MAX_SESSION_ID_CHARS
from splitspec.errors import ServiceError, SplitspecError
from splitspec.rpc import wire
from splitspec.sampling_params import SamplingParams
from splitspec.sequence import check_prompt
from splitspec.tokenizer import chat_prompt
from splitspec_protos import splitspec_v1_pb2 as pb

SPECULATION_OVERRIDE_KEYS = {"num_speculative_tokens"}


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask of the gateway. Stop strings are matched against the text after every
    round, so their number and length bound the work each round does."""

    max_tokens: int | None = None  # None: only the model's context bounds a request
    max_stop_strings: int = 16
    max_stop_string_chars: int = 256
    max_stop_token_ids: int = 64


DEFAULT_LIMITS = RequestLimits()


@dataclass
class ValidRequest:
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    num_speculative_tokens: int
    session_id: str = ""


def _invalid(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message)


def validate(
    request: pb.GenerateRequest,
    tokenizer,
    vocab_size: int,
    max_model_len: int,
    default_k: int,
    limits: RequestLimits = DEFAULT_LIMITS,
) -> ValidRequest:
    given = [name for name in ("prompt", "prompt_token_ids", "messages") if getattr(request, name)]
    if len(given) > 1:
        raise _invalid(f"set one of prompt, prompt_token_ids and messages, not {' and '.join(given)}")
    if not given:
        raise _invalid("the prompt is empty: set prompt (text), prompt_token_ids or messages")
    if request.tools_json and not request.messages:
        raise _invalid("tools_json goes with messages: the chat template shows the tools")
    prompt = _prompt_text(request, tokenizer)
    if prompt is not None:
        if tokenizer is None:
            raise _invalid("this model has no tokenizer; send prompt_token_ids")
        prompt_ids = tokenizer.encode(prompt)
    else:
        prompt_ids = list(request.prompt_token_ids)
    s = request.sampling
    if s.HasField("truncate_prompt_tokens"):
        if s.truncate_prompt_tokens < 1:
            raise _invalid("sampling.truncate_prompt_tokens must be at least 1")
        prompt_ids = prompt_ids[-s.truncate_prompt_tokens :]
    try:
        check_prompt(prompt_ids, vocab_size, max_model_len)
    except SplitspecError as exc:
        raise _invalid(str(exc)) from None

    for name in ("temperature", "top_p"):
        if s.HasField(name) and math.isnan(getattr(s, name)):
            raise _invalid(f"sampling.{name} is NaN")
    _check_limits(s, vocab_size, limits)
    try:
        params = SamplingParams(
            temperature=s.temperature if s.HasField("temperature") else 1.0,
            top_p=s.top_p if s.HasField("top_p") else 1.0,
            top_k=s.top_k if s.HasField("top_k") else -1,
            max_tokens=s.max_tokens if s.HasField("max_tokens") else 16,
            stop=list(s.stop),
            stop_token_ids=list(s.stop_token_ids),
            ignore_eos=s.ignore_eos,
            seed=s.seed if s.HasField("seed") else None,
            min_tokens=s.min_tokens,
            include_stop_str_in_output=s.include_stop_str_in_output,
            logprobs=s.logprobs if s.HasField("logprobs") else None,
            prompt_logprobs=s.prompt_logprobs if s.HasField("prompt_logprobs") else None,
            presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty,
            repetition_penalty=s.repetition_penalty if s.HasField("repetition_penalty") else 1.0,
            structured_outputs=wire.structured_outputs_from_proto(s.structured_outputs),
            min_p=s.min_p,
            logit_bias=dict(s.logit_bias),
            skip_special_tokens=s.skip_special_tokens if s.HasField("skip_special_tokens") else True,
            spaces_between_special_tokens=(
                s.spaces_between_special_tokens if s.HasField("spaces_between_special_tokens") else True
            ),
        )
        params.check_vocabulary(vocab_size)
    except SplitspecError as exc:
        raise _invalid(f"sampling: {exc}") from None

    k = default_k
    if request.HasField("speculation"):
        overrides = dict(request.speculation.items())  # numbers arrive as floats, NaN and infinity included
        unknown = set(overrides) - SPECULATION_OVERRIDE_KEYS
        if unknown:
            raise _invalid(
                f"unknown speculation overrides {sorted(unknown)}; known: {sorted(SPECULATION_OVERRIDE_KEYS)}"
            )
        if "num_speculative_tokens" in overrides:
            value = overrides["num_speculative_tokens"]
            if not isinstance(value, float) or not value.is_integer() or not 0 <= value <= 64:
                raise _invalid(f"speculation.num_speculative_tokens must be an integer in [0, 64], got {value!r}")
            k = int(value)
    if len(request.session_id) > MAX_SESSION_ID_CHARS:
        raise _invalid(
            f"session_id is {len(request.session_id)} characters long; at most {MAX_SESSION_ID_CHARS} are allowed"
        )
    return ValidRequest(prompt, prompt_ids, params, k, request.session_id)


def _check_limits(s: pb.SamplingParameters, vocab_size: int, limits: RequestLimits) -> None:
    if limits.max_tokens is not None and s.HasField("max_tokens") and s.max_tokens > limits.max_tokens:
        raise _invalid(f"sampling.max_tokens is {s.max_tokens}; this server allows at most {limits.max_tokens}")
    if len(s.stop) > limits.max_stop_strings:
        raise _invalid(f"sampling.stop has {len(s.stop)} strings; at most {limits.max_stop_strings} are allowed")
    for i, stop in enumerate(s.stop):
        if len(stop) > limits.max_stop_string_chars:
            raise _invalid(
                f"sampling.stop[{i}] is {len(stop)} characters long; at most {limits.max_stop_string_chars} are allowed"
            )
    if len(s.stop_token_ids) > limits.max_stop_token_ids:
        raise _invalid(
            f"sampling.stop_token_ids has {len(s.stop_token_ids)} ids; at most {limits.max_stop_token_ids} are allowed"
        )
    for i, token in enumerate(s.stop_token_ids):
        if not 0 <= token < vocab_size:
            raise _invalid(f"sampling.stop_token_ids[{i}] is {token}, outside the vocabulary [0, {vocab_size})")


def _prompt_text(request: pb.GenerateRequest, tokenizer) -> str | None:
    """The request's prompt as text (a conversation with the chat template applied); None for token ids."""
    if not request.messages:
        return request.prompt or None
    messages = []
    for i, message in enumerate(request.messages):
        if not message.role:
            raise _invalid(f"messages[{i}].role is empty")
        turn: dict = {"role": message.role, "content": message.content}
        if message.tool_calls_json:
            turn["tool_calls"] = _json_list(message.tool_calls_json, f"messages[{i}].tool_calls_json")
        for name in ("tool_call_id", "name"):
            if getattr(message, name):
                turn[name] = getattr(message, name)
        messages.append(turn)
    tools = _json_list(request.tools_json, "tools_json") if request.tools_json else None
    try:
        return chat_prompt(tokenizer, messages, tools)
    except SplitspecError as exc:
        raise _invalid(str(exc)) from None


def _json_list(text: str, name: str) -> list:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise _invalid(f"{name} is not JSON: {exc}") from None
    if not isinstance(value, list):
        raise _invalid(f"{name} must be a JSON list")
    return value
