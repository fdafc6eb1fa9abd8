"""Every top-level import name this project installs is its own (issue 32).

transformers 5.25 made Hugging Face's `kernels` distribution a dependency and imports it at start-up;
a package of ours named `kernels` shadowed it from the repository root and overwrote it in a built
install. These tests fail on such a clash, whichever distribution brings the other name.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def installed_names() -> list[str]:
    top_level = importlib.metadata.distribution("splitspec").read_text("top_level.txt") or ""
    return sorted(name for name in top_level.split() if name)


def test_the_installed_names_are_the_packages_of_the_repository() -> None:
    """The names checked below are all the project ships: every package folder at the root is one."""
    folders = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert set(installed_names()) == folders


@pytest.mark.parametrize("name", installed_names())
def test_no_other_installed_distribution_provides_the_name(name: str) -> None:
    # a distribution may be listed twice: from the repository root, the editable build's egg-info is seen too
    owners = set(importlib.metadata.packages_distributions().get(name, []))
    assert owners == {"splitspec"}, f"import name {name!r} is also provided by {sorted(owners - {'splitspec'})}"


@pytest.mark.parametrize("name", installed_names())
def test_the_name_resolves_to_this_repository_from_its_root(name: str) -> None:
    found = subprocess.run(
        [sys.executable, "-c", f"import importlib.util; print(importlib.util.find_spec({name!r}).origin)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(found) == ROOT / name / "__init__.py"


def test_transformers_imports_its_hub_kernels_from_the_repository_root() -> None:
    """`python -m pytest` and `python -c` put the root first on sys.path, where a clash bites."""
    result = subprocess.run(
        [sys.executable, "-c", "import transformers.integrations.hub_kernels, transformers"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_no_test_folder_is_named_as_another_distribution_imports() -> None:
    """tests/ is on sys.path while the tests run (conftest.py), so each folder there is importable as a
    namespace package: one named like another distribution's package (`kernels`) would be found by
    anything that probes for that package where it is not installed."""
    taken = importlib.metadata.packages_distributions()
    folders = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    clashes = {name: taken[name] for name in folders if set(taken.get(name, [])) - {"splitspec"}}
    assert not clashes, f"test folders named as other distributions' packages: {clashes}"
