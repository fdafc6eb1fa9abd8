"""OpenAI's `tools` on chat completions, made calls through the grammar, as vLLM does for `tool_choice`
"required" and a named function: the answer is constrained to JSON that is a valid call, and comes
back as `tool_calls` instead of content.

- a named function: the answer is that function's arguments, under its `parameters` schema;
- "required": a JSON array of at least one {"name": ..., "parameters": {...}} object, each name one of
  the tools and its parameters under that tool's schema (one call only with `parallel_tool_calls`
  false);
- "none": the tools are shown to the chat template and the answer is plain content.

"auto" is refused: telling a call from content in a free answer needs a parser for each model family's
own call format, which splitspec does not have. The tools always go to the chat template, which shows
them to the model as its family expects (templates that know no tools leave them out).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from splitspec_protos import splitspec_v1_pb2 as pb

ANY_OBJECT = {"type": "object"}


class ToolCallError(ValueError):
    """A tools request that cannot be served; the message names the parameter."""


@dataclass(frozen=True)
class ToolMode:
    """How a choice's answer becomes tool calls: `function` for a named function, None for "required"."""

    function: str | None


def tool_request(body: dict) -> tuple[ToolMode | None, pb.StructuredOutputs | None, str]:
    """The body's tools as (how the answer becomes calls, the grammar that makes it one, the tools as
    JSON for the chat template). (None, None, "") without tools or with tool_choice "none"."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is None or tools == []:
        if choice not in (None, "none"):
            raise ToolCallError("tool_choice needs tools")
        return None, None, ""
    schemas = _tool_schemas(tools)
    shown = json.dumps(tools)
    if choice == "none":
        return None, None, shown
    if choice is None or choice == "auto":
        raise ToolCallError(
            'tool_choice "auto" is not supported: send "required", a named function '
            '({"type": "function", "function": {"name": ...}}) or "none"'
        )
    if choice == "required":
        single = body.get("parallel_tool_calls") is False
        calls = {"type": "array", "minItems": 1, "items": {"anyOf": [_call_schema(n, s) for n, s in schemas.items()]}}
        if single:
            calls["maxItems"] = 1
        return ToolMode(None), pb.StructuredOutputs(json=json.dumps(calls)), shown
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(name, str):
        raise ToolCallError(
            'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}'
        )
    if name not in schemas:
        raise ToolCallError(f"tool_choice names {name!r}, which is not among the tools")
    return ToolMode(name), pb.StructuredOutputs(json=json.dumps(schemas[name])), shown


def tool_calls(mode: ToolMode, text: str) -> list[dict] | None:
    """The answer as OpenAI's tool_calls; None when it is not a whole call (cut off by max_tokens)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if mode.function is not None:
        return [_call(mode.function, text)]
    return [_call(call["name"], json.dumps(call["parameters"])) for call in value]


def _call(name: str, arguments: str) -> dict:
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def _call_schema(name: str, parameters: dict) -> dict:
    return {
        "type": "object",
        "properties": {"name": {"type": "string", "enum": [name]}, "parameters": parameters},
        "required": ["name", "parameters"],
        "additionalProperties": False,
    }


def _tool_schemas(tools) -> dict[str, dict]:
    """Each function's name and parameters schema (any object where it gives none)."""
    if not isinstance(tools, list):
        raise ToolCallError("tools must be a list of {type: function, function: {name, parameters}} objects")
    schemas: dict[str, dict] = {}
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise ToolCallError(f"tools[{i}] must be {{type: function, function: {{name, parameters}}}}")
        name, parameters = function.get("name"), function.get("parameters", ANY_OBJECT)
        if not isinstance(name, str) or not name:
            raise ToolCallError(f"tools[{i}].function.name must be a non-empty string")
        if not isinstance(parameters, dict):
            raise ToolCallError(f"tools[{i}].function.parameters must be a JSON schema object")
        if name in schemas:
            raise ToolCallError(f"tools[{i}]: a second function named {name!r}")
        schemas[name] = parameters
    return schemas
