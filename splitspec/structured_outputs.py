"""What a request's output must match, vLLM's `StructuredOutputsParams`: a JSON schema, any JSON object,
a regular expression, one of several strings, or an EBNF grammar. Matching it is
splitspec.output_grammar's job; this module only says what was asked, and checks its shape."""

from __future__ import annotations

import json
from dataclasses import dataclass

from splitspec.errors import SplitspecError

KINDS = ("json", "regex", "choice", "grammar", "json_object")


@dataclass(frozen=True)
class StructuredOutputsParams:
    """Exactly one of: json (a JSON schema, as a dict or its JSON text), regex, choice (the output is one
    of these strings), grammar (EBNF, as xgrammar and llama.cpp's GBNF write it), json_object (any JSON
    object, OpenAI's `response_format` `{"type": "json_object"}`)."""

    json: dict | str | None = None
    regex: str | None = None
    choice: tuple[str, ...] | list[str] | None = None
    grammar: str | None = None
    json_object: bool = False

    def __post_init__(self) -> None:
        given = [kind for kind in KINDS if getattr(self, kind) not in (None, False)]
        if len(given) != 1:
            raise SplitspecError(f"structured_outputs takes exactly one of {', '.join(KINDS)}; got {given or 'none'}")
        if self.json is not None:
            schema = self.json
            if isinstance(schema, str):
                try:
                    schema = json.loads(schema)
                except ValueError as exc:
                    raise SplitspecError(f"structured_outputs.json is not valid JSON: {exc}") from None
            if not isinstance(schema, (dict, bool)):
                raise SplitspecError("structured_outputs.json must be a JSON schema: an object")
        for kind in ("regex", "grammar"):
            value = getattr(self, kind)
            if value is not None and (not isinstance(value, str) or not value):
                raise SplitspecError(f"structured_outputs.{kind} must be a non-empty string")
        if self.choice is not None:
            if isinstance(self.choice, str) or not all(isinstance(c, str) and c for c in self.choice):
                raise SplitspecError("structured_outputs.choice must be a list of non-empty strings")
            if not self.choice:
                raise SplitspecError("structured_outputs.choice must name at least one string")
            object.__setattr__(self, "choice", tuple(self.choice))
        if not isinstance(self.json_object, bool):
            raise SplitspecError("structured_outputs.json_object must be true or false")

    @property
    def kind(self) -> str:
        return next(kind for kind in KINDS if getattr(self, kind) not in (None, False))

    @property
    def json_schema(self) -> str:
        """The schema as JSON text (json only)."""
        return self.json if isinstance(self.json, str) else json.dumps(self.json)

    @property
    def key(self) -> tuple[str, str]:
        """Equal for requests that compile to the same grammar."""
        if self.json is not None:
            return ("json", self.json_schema)
        if self.choice is not None:
            return ("choice", json.dumps(self.choice))
        return (self.kind, "" if self.json_object else getattr(self, self.kind))
