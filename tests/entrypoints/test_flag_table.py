"""Every service flag is one row of splitspec.entrypoints.service_flags (issue 34): the parsers are made from
the rows, each row reaches the settings field it names, and docker-compose.yml, deploy/k8s/ and
`splitspec up` spell only flags and SPLITSPEC_* variables the rows know. Each check is also run on a
planted mistake, to show that it can fail."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import re
import typing
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from splitspec.entrypoints.cli import build_parser
from splitspec.entrypoints.cli_services import up_commands
from splitspec.entrypoints.flag_table import ENV_PREFIX, ON_OFF, Flag, add_flags
from splitspec.entrypoints.service_flags import OTHER_VARIABLES, SERVICE_FLAGS, UP_FLAGS
from splitspec.rpc.throwaway_certs import make_stack_certificates

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.gpu.yml"]
COMMANDS = {**SERVICE_FLAGS, "up": UP_FLAGS}
SERVICE_COMMANDS = {"verifier": "serve-verifier", "proposer": "serve-proposer", "gateway": "serve-gateway"}
KNOWN_VARIABLES = {row.env_var for rows in COMMANDS.values() for row in rows if row.env} | set(OTHER_VARIABLES)
VARIABLE = re.compile(rf"\b{ENV_PREFIX}[A-Z0-9_]+")


def _settings_classes() -> dict[str, type]:
    from gateway_svc.server import GatewaySettings
    from proposer_svc.server import ProposerSettings
    from verifier_svc.server import VerifierSettings

    return {"serve-verifier": VerifierSettings, "serve-proposer": ProposerSettings, "serve-gateway": GatewaySettings}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


@pytest.fixture
def no_environment(monkeypatch):
    """The parser reads SPLITSPEC_* for its defaults."""
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    return monkeypatch


# --- argparse and the table ---------------------------------------------------------------------------


def drift(make_parser: Callable[[], argparse.ArgumentParser], rows: tuple[Flag, ...]) -> list[str]:
    """How the parser differs from its rows: a flag one has and the other lacks, or another spelling,
    parsed attribute, action, type, choices, default, variable or help. The parser is made a second
    time with every variable a flag could be named after set, so a default read from one the row does
    not name shows."""
    actions = {a.option_strings[0]: a for a in make_parser()._actions if a.option_strings and a.dest != "help"}
    problems = [f"{name}: not in the table" for name in actions if name not in {r.name for r in rows}]
    problems += [f"{row.name}: not in the parser" for row in rows if row.name not in actions]
    with pytest.MonkeyPatch.context() as environment:
        for action in actions.values():
            environment.setenv(f"{ENV_PREFIX}{action.dest.upper()}", "from-the-environment")
        fresh = {a.option_strings[0]: a for a in make_parser()._actions if a.option_strings}
    for row in rows:
        if row.name not in actions:
            continue
        action, with_env = actions[row.name], fresh[row.name]
        reads_env = row.env is not None and row.action != "append"
        expected = {
            "spelling": row.spellings,
            "attribute": row.attribute,
            "action": type(argparse.ArgumentParser().add_argument("--x", action=row.argparse_action)).__name__,
            "type": row.type,
            "choices": list(row.choices) if row.choices is not None else None,
            "default": expected_default(row),
            "default from the environment": "from-the-environment" if reads_env else expected_default(row),
            "help": row.help,
        }
        actual = {
            "spelling": action.option_strings,
            "attribute": action.dest,
            "action": type(action).__name__,
            "type": action.type,
            "choices": action.choices,
            "default": action.default,
            "default from the environment": with_env.default,
            "help": action.help,
        }
        problems += [
            f"{row.name} {k}: table {expected[k]!r}, parser {actual[k]!r}" for k in expected if expected[k] != actual[k]
        ]
    return problems


def expected_default(row: Flag):
    """A switch's default is what it does not switch to."""
    return False if row.action == "store_true" else True if row.is_switch else row.default


def _command_parser(command: str) -> Callable[[], argparse.ArgumentParser]:
    return lambda: _subparsers(build_parser())[command]


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_parses_exactly_its_rows(no_environment, command):
    assert drift(_command_parser(command), COMMANDS[command]) == []


def _hand_made(rows: tuple[Flag, ...], mistake: str) -> argparse.ArgumentParser:
    """A parser made from the rows, then changed by hand as a careless edit would."""
    p = argparse.ArgumentParser(prog="splitspec serve-verifier")
    by_hand = {"a row dropped": "--max-num-seqs", "another variable": "--max-num-seqs", "a variable": "--max-model-len"}
    add_flags(p, [r for r in rows if r.name != by_hand.get(mistake)])
    if mistake == "a flag added by hand":
        p.add_argument("--bogus-flag", type=int, default=3)
    if mistake == "another variable":  # the row reads SPLITSPEC_MAX_NUM_SEQS
        p.add_argument("--max-num-seqs", type=int, default=os.environ.get("SPLITSPEC_MAX_SEQS", 64))
    if mistake == "a variable":  # the row reads none
        p.add_argument("--max-model-len", type=int, default=os.environ.get("SPLITSPEC_MAX_MODEL_LEN"))
    return p


@pytest.mark.parametrize(
    "mistake",
    ["a flag added by hand", "a row dropped", "another variable", "a variable"],
)
def test_drift_between_a_parser_and_its_rows_is_caught(no_environment, mistake):
    rows = SERVICE_FLAGS["serve-verifier"]
    assert drift(lambda: _hand_made(rows, "none"), rows) == []
    assert drift(lambda: _hand_made(rows, mistake), rows) != []


@pytest.mark.parametrize(
    "change",
    [{"help": "typo"}, {"default": 65}, {"type": float}, {"env": None}, {"short": "-n"}, {"dest": "max_seqs"}],
)
def test_a_row_changed_without_its_parser_is_caught(no_environment, change):
    rows = SERVICE_FLAGS["serve-verifier"]
    changed = tuple(dataclasses.replace(r, **change) if r.name == "--max-num-seqs" else r for r in rows)
    assert drift(_command_parser("serve-verifier"), changed) != []


@pytest.mark.parametrize("command", COMMANDS)
def test_every_variable_is_splitspec_and_the_flags_name(command):
    for row in COMMANDS[command]:
        assert row.env is None or row.env == row.name.lstrip("-").upper().replace("-", "_"), row.name


def test_prompt_lookup_reads_the_same_variables_wherever_it_is_a_flag():
    rows = [row for rows in COMMANDS.values() for row in rows if row.name.startswith("--prompt-lookup-")]
    assert len(rows) == 6
    assert {(row.name, row.env_var, row.default) for row in rows} == {
        ("--prompt-lookup-max", "SPLITSPEC_PROMPT_LOOKUP_MAX", 4),
        ("--prompt-lookup-min", "SPLITSPEC_PROMPT_LOOKUP_MIN", 1),
    }


# --- rows and settings fields ---------------------------------------------------------------------------


def _field_type(cls: type, path: str):
    """The type of the settings field a dotted path names; KeyError when there is none."""
    for name in path.split("."):
        if not dataclasses.is_dataclass(cls) or name not in {f.name for f in dataclasses.fields(cls)}:
            raise KeyError(f"{cls} has no field {name!r} ({path})")
        cls = typing.get_type_hints(cls)[name]
    return cls


@pytest.mark.parametrize("command", SERVICE_FLAGS)
def test_every_row_names_a_field_of_its_commands_settings(command):
    cls = _settings_classes()[command]
    for row in SERVICE_FLAGS[command]:
        assert row.field_paths, f"{row.name} fills nothing"
        for path in row.field_paths:
            _field_type(cls, path)


def test_a_row_naming_no_field_is_caught():
    with pytest.raises(KeyError, match="max_num_sequences"):
        _field_type(_settings_classes()["serve-verifier"], "runner.max_num_sequences")


GIVEN = {
    "--device": "cpu",
    "--method": "draft_model",  # the one method a --quantization is for
    "--proposers": "h:5",
    "--verifiers": "h:6",
    "--speculative-config": '{"model": "x"}',
}
"""A value for each flag that differs from its default and that the command accepts with the others."""


def _given(row: Flag) -> list[str]:
    if row.is_switch:
        return [row.name]
    if row.action == ON_OFF:  # the spelling that is not its default
        return [row.spellings[row.default]]
    if row.name in GIVEN:
        return [row.name, GIVEN[row.name]]
    if row.choices:
        return [row.name, row.choices[-1]]
    return [row.name, "0.25" if row.type is float else "3" if row.type is not None else "x"]


def _alone(rows: tuple[Flag, ...]) -> list[Flag]:
    """The rows whose field no other flag fills: the command copies their values unchanged."""
    paths = [p for row in rows for p in row.field_paths]
    return [r for r in rows if len(r.field_paths) == 1 and paths.count(r.field_paths[0]) == 1]


@pytest.mark.parametrize("command", SERVICE_FLAGS)
def test_every_flag_reaches_the_field_its_row_names(no_environment, command):
    import gateway_svc.server
    import proposer_svc.server
    import verifier_svc.server

    built = []
    for module, run in ((verifier_svc.server, "run_verifier"), (proposer_svc.server, "run_proposer")):
        no_environment.setattr(module, run, built.append)
    no_environment.setattr(gateway_svc.server, "run_gateway", built.append)
    no_environment.setenv("GOMP_SPINCOUNT", "10000")  # the serve commands set it
    rows = _alone(SERVICE_FLAGS[command])
    argv = [command, *(a for row in rows for a in _given(row))]
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    [settings] = built
    for row in rows:
        value = settings
        for name in row.field_paths[0].split("."):
            value = getattr(value, name)
        default = _settings_default(type(settings), row.field_paths[0])
        assert value == row.value(args) and value != default, f"{row.name} -> {row.field_paths[0]}"


def _settings_default(cls: type, path: str):
    head, _, rest = path.partition(".")
    [field] = [f for f in dataclasses.fields(cls) if f.name == head]
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return _settings_default(typing.get_type_hints(cls)[head], rest) if rest else dataclasses.MISSING
    for name in rest.split(".") if rest else []:
        value = getattr(value, name)
    return value


# --- docker-compose.yml, deploy/k8s/ and `splitspec up` -------------------------------------------------


def unknown_flags(argv: list[str]) -> list[str]:
    """The flags of a service command that its rows do not have."""
    rows = COMMANDS[argv[0]]
    known = {spelling for r in rows for spelling in r.spellings}
    return [f"{argv[0]} {a}" for a in argv[1:] if a.startswith("-") and a not in known]


def unknown_variables(document) -> list[str]:
    """SPLITSPEC_* names a loaded YAML document uses (as keys, values or ${...} substitutions) that no
    row knows; comments are not read."""
    found = []
    if isinstance(document, dict):
        for key, value in document.items():
            found += unknown_variables(key) + unknown_variables(value)
    elif isinstance(document, list):
        for value in document:
            found += unknown_variables(value)
    elif isinstance(document, str):
        found += [name for name in VARIABLE.findall(document) if name not in KNOWN_VARIABLES]
    return found


def _compose(filename: str) -> dict:
    return yaml.safe_load((ROOT / filename).read_text())


def compose_commands(compose: dict) -> list[list[str]]:
    commands = [s["command"] for s in compose["services"].values() if "command" in s]
    return [c.split() if isinstance(c, str) else [str(a) for a in c] for c in commands]


def k8s_documents() -> list[dict]:
    return [
        d
        for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
        for d in yaml.safe_load_all(path.read_text())
        if d
    ]


def k8s_commands(documents: list[dict]) -> list[list[str]]:
    pods = [d["spec"]["template"]["spec"] for d in documents if d["kind"] == "Deployment"]
    return [[str(a) for a in c["args"]] for pod in pods for c in pod["containers"]]


@pytest.mark.parametrize("filename", COMPOSE_FILES)
def test_compose_spells_only_flags_and_variables_of_the_table(filename):
    compose = _compose(filename)
    commands = compose_commands(compose)
    assert commands
    assert [f for c in commands for f in unknown_flags(c)] == []
    assert unknown_variables(compose) == []


def test_k8s_manifests_spell_only_flags_and_variables_of_the_table():
    documents = k8s_documents()
    commands = k8s_commands(documents)
    assert len(commands) == 3
    assert [f for c in commands for f in unknown_flags(c)] == []
    assert unknown_variables(documents) == []


def _up_argvs(tmp_path) -> list[tuple[list[str], dict]]:
    everything = [row for row in UP_FLAGS if row.passed_to]
    argv = ["up", *(a for row in everything for a in _given(row)), "--speculator-on", "proposer"]  # all three
    certs = make_stack_certificates(tmp_path, [])
    return [(["up"], {}), (argv, {}), (argv + ["--metrics-port", "9400"], {"certs": certs})]


def test_up_passes_on_only_flags_of_the_services_rows(no_environment, tmp_path):
    for argv, extra in _up_argvs(tmp_path):
        commands = up_commands(build_parser().parse_args(argv), **extra)
        for name, command in commands.items():
            served = command[command.index(SERVICE_COMMANDS[name]) :]
            assert unknown_flags(served) == [], argv
            build_parser().parse_args(served)


def test_up_passes_each_of_its_rows_on_to_the_services_it_names(no_environment, tmp_path):
    [_, (argv, _), _] = _up_argvs(tmp_path)
    commands = up_commands(build_parser().parse_args(argv))
    for row in UP_FLAGS:
        for name in row.passed_to:
            service = SERVICE_FLAGS[SERVICE_COMMANDS[name]]
            [taken] = [r for r in service if r.name == row.name]
            assert taken.type is row.type and taken.is_switch == row.is_switch, f"{name} takes {row.name} otherwise"
            assert set(row.spellings) & set(commands[name]), f"up does not pass {row.name} on to the {name}"


@pytest.mark.parametrize(
    "where, plant",
    [
        ("compose", lambda doc: doc["services"]["proposer"]["command"].extend(["--bogus-flag", "1"])),
        ("compose", lambda doc: doc["services"]["gateway"]["environment"].update(SPLITSPEC_BOGUS="1")),
        ("compose", lambda doc: doc["services"]["verifier"]["command"].extend(["--tp", "${SPLITSPEC_TP:-1}"])),
        ("k8s", lambda docs: _k8s_args(docs).extend(["--max-num-seq", "3"])),
        ("k8s", lambda docs: _k8s_container(docs).update(env=[{"name": "SPLITSPEC_MAX_SEQS", "value": "3"}])),
        ("up", lambda commands: commands["gateway"].extend(["--prompt-lookup", "4"])),
    ],
)
def test_a_planted_unknown_flag_or_variable_is_caught(where, plant):
    if where == "compose":
        document = copy.deepcopy(_compose("docker-compose.yml"))
        plant(document)
        found = [f for c in compose_commands(document) for f in unknown_flags(c)] + unknown_variables(document)
    elif where == "k8s":
        document = k8s_documents()
        plant(document)
        found = [f for c in k8s_commands(document) for f in unknown_flags(c)] + unknown_variables(document)
    else:
        commands = up_commands(build_parser().parse_args(["up"]))
        plant(commands)
        found = [f for name, c in commands.items() for f in unknown_flags(c[c.index(SERVICE_COMMANDS[name]) :])]
    assert found != []


def _k8s_container(documents: list[dict]) -> dict:
    [deployment] = [d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("verifier")]
    return deployment["spec"]["template"]["spec"]["containers"][0]


def _k8s_args(documents: list[dict]) -> list:
    return _k8s_container(documents)["args"]
