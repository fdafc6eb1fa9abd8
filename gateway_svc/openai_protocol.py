"""OpenAI's completions and chat completions, as the gateway's GenerateRequests and back.

Pure translation, no I/O: a request body becomes one GenerateRequest per choice (each prompt of a
completion times `n`), and the gateway's responses become OpenAI's objects and stream chunks. What
the OpenAI API has and splitspec does not (beam search, best_of, suffix, tool_choice "auto") is
refused by name, never silently ignored.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Callable

from google.protobuf.struct_pb2 import Struct

from gateway_svc.proposer_affinity import MAX_SESSION_ID_CHARS
from gateway_svc.tool_calls import ToolCallError, ToolMode, tool_request
from splitspec_protos import splitspec_v1_pb2 as pb

COMMON_PARAMETERS = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "min_tokens",
    "include_stop_str_in_output",
    "truncate_prompt_tokens",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "response_format",
    "structured_outputs",
    "n",
    "stream",
    "stream_options",
    "speculation",
    "user",
    "return_token_ids",
    "min_p",
    "logit_bias",
    "skip_special_tokens",
    "spaces_between_special_tokens",
}
COMPLETION_PARAMETERS = COMMON_PARAMETERS | {"prompt", "logprobs", "echo", "prompt_logprobs"}
CHAT_PARAMETERS = COMMON_PARAMETERS | {
    "messages",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
}
MAX_LOGPROBS = 20  # the most top tokens a request may ask for, as vLLM's default max_logprobs
# values of unsupported parameters that ask for nothing, as some clients send them anyway (vLLM's
# extensions at their defaults among them)
NEUTRAL_VALUES = {
    "echo": (None, False),
    "best_of": (None, 1),
    "use_beam_search": (None, False),
    "length_penalty": (None, 1, 1.0),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None,),
    "suffix": (None, ""),
}
MAX_CHOICES = 16


class InvalidRequest(ValueError):
    """A request body that cannot be served: the message names the parameter. `param` is OpenAI's."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class Choice:
    """One choice being generated: its index in the answer, and what has come back for it."""

    index: int
    request: pb.GenerateRequest
    prompt_index: int = 0  # which of a completion's prompts: usage counts each prompt once
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    usage: pb.Usage | None = None
    speculation: pb.SpeculationStats | None = None
    logprobs: list[pb.TokenLogprobs] = field(default_factory=list)
    tool_mode: ToolMode | None = None  # the answer is tool calls (gateway_svc.tool_calls)
    echo: bool = False  # a completion that starts with its prompt
    echo_shift: int | None = None  # streamed: the echoed prompt's logprobs text length, once it has gone out
    prompt_logprobs: list[pb.TokenLogprobs] = field(default_factory=list)  # per prompt token after the first


def completion_choices(body: dict, default_max_tokens: int) -> list[Choice]:
    """A /v1/completions body as one Choice per prompt and `n`: prompt i's choices are i*n .. i*n+n-1."""
    _check_parameters(body, COMPLETION_PARAMETERS)
    if "prompt" not in body:
        raise InvalidRequest("prompt is required", "prompt")
    prompts = _prompts(body["prompt"])
    template = _sampled(body, body.get("max_tokens"), default_max_tokens)
    if body.get("logprobs") is not None:
        template.sampling.logprobs = _integer(body["logprobs"], "logprobs", low=0, high=MAX_LOGPROBS)
    echo = body.get("echo") is True
    if body.get("echo") is not None and not isinstance(body["echo"], bool):
        raise InvalidRequest("echo must be true or false", "echo")
    if body.get("prompt_logprobs") is not None:
        template.sampling.prompt_logprobs = _integer(
            body["prompt_logprobs"], "prompt_logprobs", low=0, high=MAX_LOGPROBS
        )
    elif echo and template.sampling.HasField("logprobs"):  # the echoed prompt's tokens have logprobs too
        template.sampling.prompt_logprobs = template.sampling.logprobs
    n = _n(body)
    choices = []
    for i, prompt in enumerate(prompts):
        for j in range(n):
            request = pb.GenerateRequest()
            request.CopyFrom(template)
            if isinstance(prompt, str):
                request.prompt = prompt
            else:
                request.prompt_token_ids.extend(prompt)
            _seed_choice(request, j)
            choices.append(Choice(i * n + j, request, i, echo=echo))
    return choices


def chat_choices(body: dict, default_max_tokens: int) -> list[Choice]:
    """A /v1/chat/completions body as `n` Choices over the same conversation."""
    _check_parameters(body, CHAT_PARAMETERS)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list of {role, content} objects", "messages")
    if "max_tokens" in body and "max_completion_tokens" in body:
        raise InvalidRequest("set max_tokens or max_completion_tokens, not both", "max_completion_tokens")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    template = _sampled(body, max_tokens, default_max_tokens)
    _chat_logprobs_asked(body, template.sampling)
    try:
        tool_mode, calls, template.tools_json = tool_request(body)
    except ToolCallError as exc:
        raise InvalidRequest(str(exc), "tools") from None
    if calls is not None:
        if template.sampling.HasField("structured_outputs"):
            raise InvalidRequest("a tool call is itself structured output: drop response_format", "tool_choice")
        template.sampling.structured_outputs.CopyFrom(calls)
    for i, message in enumerate(messages):
        template.messages.append(_chat_message(message, i))
    choices = []
    for j in range(_n(body)):
        request = pb.GenerateRequest()
        request.CopyFrom(template)
        _seed_choice(request, j)
        choices.append(Choice(j, request, tool_mode=tool_mode))
    return choices


def _chat_message(message, i: int) -> pb.ChatMessage:
    """A turn: role and content, and an assistant's tool_calls or a tool's tool_call_id and name."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise InvalidRequest(f"messages[{i}] must be an object with a role", f"messages[{i}].role")
    turn = pb.ChatMessage(role=_text(message["role"], f"messages[{i}].role"))
    calls = message.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
            raise InvalidRequest(f"messages[{i}].tool_calls must be a list of calls", f"messages[{i}].tool_calls")
        turn.tool_calls_json = _json_text(calls, f"messages[{i}].tool_calls")
    if calls is None or message.get("content") is not None:  # a turn of calls may have no content
        turn.content = _content(message.get("content"), i)
    for name in ("tool_call_id", "name"):
        if message.get(name) is not None:
            setattr(turn, name, _text(_string(message[name], f"messages[{i}].{name}"), f"messages[{i}].{name}"))
    return turn


def _chat_logprobs_asked(body: dict, sampling: pb.SamplingParameters) -> None:
    """Chat's logprobs: true, with top_logprobs most likely tokens at each position (0 by default)."""
    wanted, top = body.get("logprobs"), body.get("top_logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise InvalidRequest("logprobs must be true or false", "logprobs")
    if top is not None:
        top = _integer(top, "top_logprobs", low=0, high=MAX_LOGPROBS)
        if not wanted:
            raise InvalidRequest("top_logprobs needs logprobs set to true", "top_logprobs")
    if wanted:
        sampling.logprobs = top or 0


def chat_logprobs(entries: list[pb.TokenLogprobs], top: int, token_text: Callable[[int], str]) -> dict:
    """A chat choice's `logprobs` for these tokens: content, one object per token."""
    return {"content": [_chat_token(entry, top, token_text) for entry in entries]}


def _chat_token(entry: pb.TokenLogprobs, top: int, token_text: Callable[[int], str]) -> dict:
    def described(token: int, logprob: float) -> dict:
        text = token_text(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    best = _top_tokens(entry, top)
    return described(entry.token_ids[0], entry.logprobs[0]) | {"top_logprobs": [described(*t) for t in best]}


def completion_logprobs(
    entries: list[pb.TokenLogprobs], top: int, token_text: Callable[[int], str], text_offset: int
) -> dict:
    """A completion choice's `logprobs` for these tokens, the first of which starts at text_offset."""
    tokens = [token_text(entry.token_ids[0]) for entry in entries]
    offsets = [text_offset + sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    return {
        "tokens": tokens,
        "token_logprobs": [entry.logprobs[0] for entry in entries],
        "top_logprobs": [{token_text(t): v for t, v in _top_tokens(entry, top)} for entry in entries],
        "text_offset": offsets,
    }


def echoed_logprobs(
    first_token: int, entries: list[pb.TokenLogprobs], top: int, token_text: Callable[[int], str]
) -> dict:
    """An echoed prompt's part of a completion's `logprobs`: its first token has none (null), as OpenAI's."""
    scored = completion_logprobs(entries, top, token_text, len(token_text(first_token)))
    return {
        "tokens": [token_text(first_token), *scored["tokens"]],
        "token_logprobs": [None, *scored["token_logprobs"]],
        "top_logprobs": [None, *scored["top_logprobs"]],
        "text_offset": [0, *scored["text_offset"]],
    }


def vllm_prompt_logprobs(entries: list[pb.TokenLogprobs], token_text: Callable[[int], str]) -> list[dict | None]:
    """vLLM's `prompt_logprobs` of a choice: null for the first token, then {token id: {logprob, rank,
    decoded_token}} for each later one, its own token first."""
    return [None] + [
        {
            str(t): {"logprob": v, "rank": r, "decoded_token": token_text(t)}
            for t, v, r in zip(e.token_ids, e.logprobs, e.ranks)
        }
        for e in entries
    ]


def _top_tokens(entry: pb.TokenLogprobs, top: int) -> list[tuple[int, float]]:
    """The `top` most likely tokens at the position, by rank: the generated token among them if it is."""
    ranked = sorted(zip(entry.ranks, entry.token_ids, entry.logprobs))
    return [(token, logprob) for rank, token, logprob in ranked if rank <= top][:top]


def _check_parameters(body: dict, known: set[str]) -> None:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    unsupported = sorted(
        _printable(key)
        for key, value in body.items()
        if key not in known and value not in NEUTRAL_VALUES.get(key, (None,))
    )
    if unsupported:
        raise InvalidRequest(f"unsupported parameters: {', '.join(unsupported)}", unsupported[0])


def _prompts(prompt) -> list[str | list[int]]:
    """A string, a list of strings, a list of token ids, or a list of lists of token ids."""
    if isinstance(prompt, str):
        return [_text(prompt, "prompt")]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return [_text(p, "prompt") for p in prompt]
        if all(_is_int(t) for t in prompt):
            return [_token_ids(prompt, "prompt")]
        if all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in prompt):
            return [_token_ids(p, "prompt") for p in prompt]
    raise InvalidRequest(
        "prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids", "prompt"
    )


def _content(content, i: int) -> str:
    """A message's content: a string, or a list of text parts joined."""
    name = f"messages[{i}].content"
    if isinstance(content, str):
        return _text(content, name)
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequest(f"{name}: only text parts are supported", name)
            texts.append(_text(part["text"], name))
        return "".join(texts)
    raise InvalidRequest(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")


def _sampled(body: dict, max_tokens, default_max_tokens: int) -> pb.GenerateRequest:
    """The sampling and speculation every choice of the body shares."""
    request = pb.GenerateRequest()
    s = request.sampling
    s.max_tokens = _integer(max_tokens, "max_tokens", low=1) if max_tokens is not None else default_max_tokens
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            setattr(s, name, _number(body[name], name))
    if body.get("top_k") is not None:
        s.top_k = _integer(body["top_k"], "top_k", low=-1)
    if body.get("seed") is not None:
        s.seed = _integer(body["seed"], "seed", low=-(2**63), high=2**63 - 1)
    stop = body.get("stop")
    if isinstance(stop, str):
        s.stop.append(_text(stop, "stop"))
    elif isinstance(stop, list) and all(isinstance(x, str) for x in stop):
        s.stop.extend(_text(x, "stop") for x in stop)
    elif stop is not None:
        raise InvalidRequest("stop must be a string or a list of strings", "stop")
    stop_ids = body.get("stop_token_ids")
    if stop_ids is not None:
        if not isinstance(stop_ids, list) or not all(_is_int(t) for t in stop_ids):
            raise InvalidRequest("stop_token_ids must be a list of token ids", "stop_token_ids")
        s.stop_token_ids.extend(_token_ids(stop_ids, "stop_token_ids"))
    if body.get("ignore_eos") is not None:
        if not isinstance(body["ignore_eos"], bool):
            raise InvalidRequest("ignore_eos must be true or false", "ignore_eos")
        s.ignore_eos = body["ignore_eos"]
    if body.get("include_stop_str_in_output") is not None:
        if not isinstance(body["include_stop_str_in_output"], bool):
            raise InvalidRequest("include_stop_str_in_output must be true or false", "include_stop_str_in_output")
        s.include_stop_str_in_output = body["include_stop_str_in_output"]
    if body.get("truncate_prompt_tokens") is not None:
        s.truncate_prompt_tokens = _integer(body["truncate_prompt_tokens"], "truncate_prompt_tokens", low=1)
    if body.get("min_tokens") is not None:
        s.min_tokens = _integer(body["min_tokens"], "min_tokens", low=0)
    for name in ("presence_penalty", "frequency_penalty"):  # their ranges: the gateway's SamplingParams
        if body.get(name) is not None:
            setattr(s, name, _number(body[name], name))
    if body.get("repetition_penalty") is not None:
        s.repetition_penalty = _number(body["repetition_penalty"], "repetition_penalty")
    if body.get("min_p") is not None:
        s.min_p = _number(body["min_p"], "min_p")
    if body.get("logit_bias") is not None:
        s.logit_bias.update(_logit_bias(body["logit_bias"]))
    for name in ("skip_special_tokens", "spaces_between_special_tokens"):
        if body.get(name) is not None:
            if not isinstance(body[name], bool):
                raise InvalidRequest(f"{name} must be true or false", name)
            setattr(s, name, body[name])
    structured = _structured_outputs(body)
    if structured is not None:
        s.structured_outputs.CopyFrom(structured)
    user = body.get("user")
    if user is not None:  # OpenAI's stable end-user id: keeps the user's requests on one proposer pod
        if not isinstance(user, str) or len(user) > MAX_SESSION_ID_CHARS:
            raise InvalidRequest(f"user must be a string of at most {MAX_SESSION_ID_CHARS} characters", "user")
        request.session_id = _text(user, "user")
    speculation = body.get("speculation")
    if speculation is not None:
        if not isinstance(speculation, dict):
            raise InvalidRequest('speculation must be an object, such as {"num_speculative_tokens": 0}', "speculation")
        overrides = Struct()
        try:
            overrides.update(speculation)
        except (ValueError, TypeError, OverflowError) as exc:  # UnicodeEncodeError is a ValueError
            raise InvalidRequest(
                f"speculation holds a value JSON-to-protobuf cannot carry: {exc}", "speculation"
            ) from None
        request.speculation.CopyFrom(overrides)
    return request


STRUCTURED_OUTPUT_KINDS = ("json", "regex", "choice", "grammar", "json_object")


def _structured_outputs(body: dict) -> pb.StructuredOutputs | None:
    """OpenAI's `response_format` (text, json_object, json_schema) or vLLM's `structured_outputs`
    (json, regex, choice, grammar, json_object); at most one of the two."""
    response_format, structured = body.get("response_format"), body.get("structured_outputs")
    if response_format is not None and structured is not None:
        raise InvalidRequest("set response_format or structured_outputs, not both", "response_format")
    if response_format is not None:
        if not isinstance(response_format, dict) or response_format.get("type") not in (
            "text",
            "json_object",
            "json_schema",
        ):
            raise InvalidRequest(
                'response_format must be {"type": "text"}, {"type": "json_object"} or {"type": "json_schema", '
                '"json_schema": {"name": ..., "schema": {...}}}',
                "response_format",
            )
        if response_format["type"] == "text":
            return None
        if response_format["type"] == "json_object":
            return pb.StructuredOutputs(json_object=True)
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise InvalidRequest("response_format.json_schema.schema must be a JSON schema object", "response_format")
        return pb.StructuredOutputs(json=_json_text(spec["schema"], "response_format"))
    if structured is None:
        return None
    if not isinstance(structured, dict):
        raise InvalidRequest('structured_outputs must be an object, such as {"regex": "[0-9]+"}', "structured_outputs")
    unknown = sorted(_printable(key) for key in structured if key not in STRUCTURED_OUTPUT_KINDS)
    if unknown:
        raise InvalidRequest(
            f"structured_outputs: unsupported keys {', '.join(unknown)}; known: {', '.join(STRUCTURED_OUTPUT_KINDS)}",
            "structured_outputs",
        )
    message = pb.StructuredOutputs()
    if structured.get("json") is not None:
        schema = structured["json"]
        message.json = (
            _text(schema, "structured_outputs") if isinstance(schema, str) else _json_text(schema, "structured_outputs")
        )
    for kind in ("regex", "grammar"):
        if structured.get(kind) is not None:
            setattr(message, kind, _text(_string(structured[kind], f"structured_outputs.{kind}"), "structured_outputs"))
    if structured.get("choice") is not None:
        choice = structured["choice"]
        if not isinstance(choice, list) or not all(isinstance(c, str) for c in choice):
            raise InvalidRequest("structured_outputs.choice must be a list of strings", "structured_outputs")
        message.choice.extend(_text(c, "structured_outputs") for c in choice)
    if structured.get("json_object") is not None:
        if not isinstance(structured["json_object"], bool):
            raise InvalidRequest("structured_outputs.json_object must be true or false", "structured_outputs")
        message.json_object = structured["json_object"]
    return message


def _json_text(value, param: str) -> str:
    try:
        return json.dumps(value, allow_nan=False)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"{param}: the schema holds a value JSON cannot carry: {exc}", param) from None


def _string(value, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string", name.split(".")[0])
    return value


def _seed_choice(request: pb.GenerateRequest, j: int) -> None:
    """Choice j of a seeded request samples with seed + j: every choice reproducible, no two the same."""
    if request.sampling.HasField("seed") and j:
        request.sampling.seed = (request.sampling.seed + j + 2**63) % 2**64 - 2**63


def _n(body: dict) -> int:
    n = body.get("n")
    return 1 if n is None else _integer(n, "n", low=1, high=MAX_CHOICES)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _token_ids(ids: list[int], name: str) -> list[int]:
    """Token ids as the wire carries them (int32); whether the model has them, the verifier says."""
    bad = next((t for t in ids if not 0 <= t < 2**31), None)
    if bad is not None:
        raise InvalidRequest(f"{name}: token ids are integers in [0, 2^31), got {bad}", name)
    return list(ids)


def _logit_bias(bias) -> dict[int, float]:
    """OpenAI's logit_bias: {"token id": bias}; the bias's range and whether the model has the token,
    the gateway's SamplingParams say."""
    if not isinstance(bias, dict):
        raise InvalidRequest(
            'logit_bias must be an object of token ids to biases, such as {"50256": -100}', "logit_bias"
        )
    parsed = {}
    for key, value in bias.items():
        token = int(key) if isinstance(key, str) and key.isascii() and key.isdigit() else None
        if token is None or token >= 2**31:
            raise InvalidRequest(f"logit_bias keys are token ids in [0, 2^31), got {_printable(key)!r}", "logit_bias")
        parsed[token] = _number(value, f"logit_bias[{key}]")
    return parsed


def _printable(name: str) -> str:
    """A name as an error message can carry it: lone surrogates escaped."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _text(value: str, name: str) -> str:
    """Text the wire can carry: valid Unicode (JSON can spell a lone UTF-16 surrogate, UTF-8 cannot)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start : exc.end].encode("unicode_escape").decode()
        raise InvalidRequest(f"{name} is not valid Unicode text: it holds the lone surrogate {bad}", name) from None
    return value


def _integer(value, name: str, low: int | None = None, high: int = 2**31 - 1) -> int:
    if not _is_int(value) or (low is not None and value < low) or value > high:
        bounds = f" in [{low}, {high}]" if low is not None else ""
        raise InvalidRequest(f"{name} must be an integer{bounds}, got {value!r}", name)
    return value


def _number(value, name: str) -> float:
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an integer past float's range
        number = math.inf
    if not math.isfinite(number):
        raise InvalidRequest(f"{name} must be a finite number, got {value!r}", name)
    return number


def returns_token_ids(body: dict, default: bool = False) -> bool:
    """vLLM's `return_token_ids`: each choice (and each stream chunk) also carries its token ids.
    `default` applies when the body does not say: true for a model without a tokenizer, whose answers
    have no text, so that each chunk still carries what was generated."""
    value = body.get("return_token_ids")
    if value is not None and not isinstance(value, bool):
        raise InvalidRequest("return_token_ids must be true or false", "return_token_ids")
    return default if value is None else value


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(choices: list[Choice]) -> dict:
    """OpenAI's usage over every choice (each prompt counted once), with splitspec's speculation stats."""
    prompts: dict[int, int] = {}
    completion = 0
    rounds = drafted = accepted = 0
    for c in choices:
        if c.usage is not None:
            prompts[c.prompt_index] = c.usage.prompt_tokens
            completion += c.usage.completion_tokens
        if c.speculation is not None:
            rounds += c.speculation.num_rounds
            drafted += c.speculation.num_draft_tokens
            accepted += c.speculation.num_accepted_tokens
    prompt = sum(prompts.values())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "speculation": {
            "num_rounds": rounds,
            "num_draft_tokens": drafted,
            "num_accepted_tokens": accepted,
            "mean_tokens_per_round": completion / rounds if rounds else 0.0,
        },
    }
