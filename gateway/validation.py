"""Turn a GenerateRequest into a prompt, sampling parameters and K, or refuse it with INVALID_ARGUMENT."""

from __future__ import annotations

import math
from dataclasses import dataclass

import grpc

from protos import splitspec_v1_pb2 as pb
from splitspec.errors import ServiceError, SplitspecError
from splitspec.sampling_params import SamplingParams
from splitspec.sequence import check_prompt

SPECULATION_OVERRIDE_KEYS = {"num_speculative_tokens"}


@dataclass
class ValidRequest:
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    num_speculative_tokens: int


def _invalid(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message)


def validate(
    request: pb.GenerateRequest, tokenizer, vocab_size: int, max_model_len: int, default_k: int
) -> ValidRequest:
    if request.prompt and request.prompt_token_ids:
        raise _invalid("set either prompt or prompt_token_ids, not both")
    if not request.prompt and not request.prompt_token_ids:
        raise _invalid("the prompt is empty: set prompt (text) or prompt_token_ids")
    if request.prompt:
        if tokenizer is None:
            raise _invalid("this model has no tokenizer; send prompt_token_ids")
        prompt_ids = tokenizer.encode(request.prompt)
    else:
        prompt_ids = list(request.prompt_token_ids)
    try:
        check_prompt(prompt_ids, vocab_size, max_model_len)
    except SplitspecError as exc:
        raise _invalid(str(exc)) from None

    s = request.sampling
    for name in ("temperature", "top_p"):
        if s.HasField(name) and math.isnan(getattr(s, name)):
            raise _invalid(f"sampling.{name} is NaN")
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
        )
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
    return ValidRequest(request.prompt or None, prompt_ids, params, k)
