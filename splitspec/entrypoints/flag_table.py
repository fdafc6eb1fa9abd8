"""A command-line flag is one row: its name, the SPLITSPEC_<ENV> variable that gives its default, its type,
default and help, and the settings field it fills. The parsers are made from the rows (add_flags), the
settings from the parsed arguments (settings_from), and `splitspec up` passes its rows on to the services
it starts (passed_on). The rows themselves are in splitspec.entrypoints.service_flags."""

from __future__ import annotations

import argparse
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any, TypeVar

ENV_PREFIX = "SPLITSPEC_"
SWITCHES = ("store_true", "store_false")
ON_OFF = "on_off"
"""The action of a flag given as --name or --no-name (argparse's BooleanOptionalAction), default `default`."""

T = TypeVar("T")


def env_default(name: str, default):
    """SPLITSPEC_<name> as the flag's default. It stays a string: argparse converts it with the flag's
    type only for the subcommand that runs, and reports a bad value as it would a bad flag."""
    return os.environ.get(f"{ENV_PREFIX}{name}", default)


@dataclass(frozen=True)
class Flag:
    name: str
    """"--max-num-seqs"."""
    type: Callable[[str], Any] | None = None
    """Turns the text given (or the environment's) into the value; a bad one is an argparse error."""
    default: Any = None
    env: str | None = None
    """SPLITSPEC_<env>, when set, is the default. An "append" flag's variable holds its values
    comma-separated, and the command reads it itself when the flag is not given."""
    help: str | None = None
    fills: tuple[str, ...] | None = None
    """The settings fields it fills, dotted through nested settings ("runner.max_num_seqs"); None: the
    field named as the parsed attribute. A field that one flag alone fills takes its value; one that
    several fill together (TLS, API keys) is built by the command (settings_from's `built`)."""
    short: str | None = None
    """"-k"."""
    choices: tuple[str, ...] | None = None
    action: str = "store"
    """"store", "append", a switch: "store_true" or "store_false", or ON_OFF."""
    dest: str | None = None
    """The parsed attribute, when not the one argparse derives from the name."""
    negate: bool = False
    """A switch that fills the opposite of what it parses to (--fixed-k fills adaptive)."""
    passed_to: tuple[str, ...] = ()
    """`splitspec up`: the services ("verifier", "proposer", "gateway") it passes the flag on to."""
    pass_default: bool = True
    """`splitspec up` passes the value on even when it is the default (a switch never is)."""

    def __post_init__(self) -> None:
        if self.is_switch and (self.type is not None or self.env is not None or self.default is not None):
            raise ValueError(f"{self.name}: a switch takes no type, environment or default")
        if self.action == ON_OFF and (
            self.type is not None or self.env is not None or not isinstance(self.default, bool)
        ):
            raise ValueError(
                f"{self.name}: an on/off flag takes a default of true or false, and no type or environment"
            )

    @property
    def argparse_action(self) -> str | type[argparse.Action]:
        return argparse.BooleanOptionalAction if self.action == ON_OFF else self.action

    @property
    def spellings(self) -> list[str]:
        """As argparse lists them: the name, then the short form (or an on/off flag's --no- form)."""
        if self.action == ON_OFF:
            return [self.name, f"--no-{self.name[2:]}"]
        return [self.name, self.short] if self.short else [self.name]

    @property
    def is_switch(self) -> bool:
        return self.action in SWITCHES

    @property
    def attribute(self) -> str:
        """Where argparse puts the value."""
        return self.dest or self.name.lstrip("-").replace("-", "_")

    @property
    def env_var(self) -> str | None:
        return f"{ENV_PREFIX}{self.env}" if self.env else None

    @property
    def field_paths(self) -> tuple[str, ...]:
        return (self.attribute,) if self.fills is None else self.fills

    @property
    def parsed_default(self) -> Any:
        """The value when the flag is not given and its variable is unset."""
        if self.is_switch:
            return self.action == "store_false"
        if self.action == ON_OFF:
            return self.default
        return self.type(self.default) if isinstance(self.default, str) and self.type else self.default

    def value(self, args: argparse.Namespace) -> Any:
        """The value of the field it fills."""
        value = getattr(args, self.attribute)
        return not value if self.negate else value


def within(prefix: str, rows: Iterable[Flag]) -> tuple[Flag, ...]:
    """Rows of nested settings (a RunnerConfig under "runner"), as the enclosing settings' rows."""
    return tuple(replace(row, fills=tuple(f"{prefix}.{path}" for path in row.field_paths)) for row in rows)


def passed(services: tuple[str, ...], rows: Iterable[Flag]) -> tuple[Flag, ...]:
    """Rows that `splitspec up` takes and passes on to these services."""
    return tuple(replace(row, passed_to=services) for row in rows)


def add_flags(parser: argparse.ArgumentParser, rows: Iterable[Flag]) -> None:
    for row in rows:
        names = (row.name, row.short) if row.short else (row.name,)
        kwargs: dict[str, Any] = {"action": row.argparse_action, "help": row.help}
        if row.dest is not None:
            kwargs["dest"] = row.dest
        if row.action == ON_OFF:
            kwargs["default"] = row.default
        elif not row.is_switch:
            # an "append" flag's variable is read by the command: argparse would append to a default list
            reads_env = row.env is not None and row.action != "append"
            kwargs["default"] = env_default(row.env, row.default) if reads_env else row.default
            kwargs["type"] = row.type
            kwargs["choices"] = list(row.choices) if row.choices is not None else None
        parser.add_argument(*names, **kwargs)


def settings_from(cls: type[T], args: argparse.Namespace, rows: Iterable[Flag], built: Mapping[str, Any]) -> T:
    """cls made from the parsed flags. Each field that one flag alone fills takes its value, nested
    settings (runner.max_num_seqs) are their defaults with the flags' fields replaced, and `built` gives,
    by dotted path, the fields that several flags fill together and settings made whole by the command."""
    rows = tuple(rows)
    fillers = Counter(path for row in rows for path in row.field_paths)
    values: dict[str, Any] = dict(built)
    for row in rows:
        for path in row.field_paths:
            if any(path == given or path.startswith(given + ".") for given in built):
                continue
            if fillers[path] > 1 or len(row.field_paths) > 1:
                raise TypeError(f"{cls.__name__}.{path}: several flags fill it ({row.name} among them), so build it")
            values[path] = row.value(args)
    return _assemble(cls, values)


def _assemble(base: Any, values: Mapping[str, Any]) -> Any:
    """base (a settings class, or settings whose other fields stay) with these values by dotted path."""
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = defaultdict(dict)
    for path, value in values.items():
        head, _, rest = path.partition(".")
        if rest:
            nested[head][rest] = value
        else:
            direct[head] = value
    for head, sub in nested.items():
        direct[head] = _assemble(_current(base, head), sub)
    return base(**direct) if isinstance(base, type) else replace(base, **direct)


def _current(base: Any, name: str) -> Any:
    """The settings a nested field holds before the flags' values go in: its value, or its class's default."""
    if not isinstance(base, type):
        return getattr(base, name)
    [found] = [f for f in fields(base) if f.name == name]
    if found.default is not MISSING:
        return found.default
    if found.default_factory is not MISSING:
        return found.default_factory()
    raise TypeError(f"{base.__name__}.{name} has no default for the flags to fill: build it whole")


def passed_on(args: argparse.Namespace, rows: Iterable[Flag], service: str) -> list[str]:
    """The flags `splitspec up` passes on to one service, as given to `up`: each row that names the
    service, by its long name; a switch only when given, a value not given (None, '') never, and a
    row with pass_default=False only when not its default."""
    argv: list[str] = []
    for row in rows:
        if service not in row.passed_to:
            continue
        value = getattr(args, row.attribute)
        if row.is_switch:
            argv += [row.name] if value != row.parsed_default else []
        elif row.action == ON_OFF:
            argv += [] if value == row.parsed_default else [row.name if value else f"--no-{row.name[2:]}"]
        elif value is not None and value != "" and (row.pass_default or value != row.parsed_default):
            argv += [row.name, str(value)]
    return argv
