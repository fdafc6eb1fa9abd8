"""Imports point down only: leaves, core, rpc plumbing, services, entry points (README, Layout).

Every `import` and `from ... import` in the packages is read with `ast`, lazy imports inside functions
and TYPE_CHECKING blocks included, and each edge between two of our modules is checked against the
layer table below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("splitspec_kernels", "splitspec_protos", "splitspec", "proposer_svc", "verifier_svc", "gateway_svc")
ENTRY_POINTS = ("splitspec.engine", "splitspec.entrypoints")
"""The top of `splitspec`: they compose the services; the package's own __init__ (the public
`from splitspec import LLM`) and __main__ belong here too."""

MAY_IMPORT = {
    "splitspec_kernels": {"splitspec_kernels"},
    "splitspec_protos": {"splitspec_protos"},
    "core": {"core", "splitspec_kernels"},
    "rpc": {"rpc", "core", "splitspec_protos"},
    "proposer_svc": {"proposer_svc", "rpc", "core", "splitspec_protos", "splitspec_kernels"},
    "verifier_svc": {"verifier_svc", "rpc", "core", "splitspec_protos", "splitspec_kernels"},
    "gateway_svc": {"gateway_svc", "rpc", "core", "splitspec_protos"},
    "entry": {
        "entry",
        "gateway_svc",
        "proposer_svc",
        "verifier_svc",
        "rpc",
        "core",
        "splitspec_protos",
        "splitspec_kernels",
    },
}


def layer_of(module: str) -> str:
    top = module.split(".")[0]
    if top != "splitspec":
        return top
    if module in ("splitspec", "splitspec.__main__") or any(
        module == p or module.startswith(p + ".") for p in ENTRY_POINTS
    ):
        return "entry"
    return "rpc" if module == "splitspec.rpc" or module.startswith("splitspec.rpc.") else "core"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def absolute_module(importer: str, node: ast.ImportFrom) -> str:
    """The module a `from` import names; a relative one (`from . import x`, `from ..a import b`) is
    resolved against the importer's package, as the import system does."""
    if node.level == 0:
        return node.module or ""
    is_package = ROOT.joinpath(*importer.split("."), "__init__.py").is_file()
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imported_modules(source: str, importer: str) -> set[str]:
    """Our modules a source imports; `from pkg import sub` counts as pkg.sub when sub is a module."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = absolute_module(importer, node)
            for alias in node.names:
                submodule = f"{module}.{alias.name}" if module else alias.name
                found.add(submodule if is_module(submodule) else module)
    return {m for m in found if m.split(".")[0] in PACKAGES}


def upward_edges(sources: dict[str, str]) -> list[str]:
    edges = []
    for importer, source in sorted(sources.items()):
        for imported in sorted(imported_modules(source, importer)):
            if layer_of(imported) not in MAY_IMPORT[layer_of(importer)]:
                edges.append(f"{importer} ({layer_of(importer)}) imports {imported} ({layer_of(imported)})")
    return edges


def repository_sources() -> dict[str, str]:
    return {
        module_name(path): path.read_text()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "_pb2" not in path.name
    }


def test_imports_point_down_only() -> None:
    assert upward_edges(repository_sources()) == []


ROUND_PATH = (
    "gateway_svc.round_plan",
    "gateway_svc.drafter_pool",
    "gateway_svc.request_state",
    "gateway_svc.placement",
    "gateway_svc.proposer_drafts",
    "gateway_svc.draft_sizing",
    "gateway_svc.round_modes",
    "gateway_svc.generation",
    "gateway_svc.server",
)
"""The gateway's round path (docs/round-path.md), each module importing only those before it: the plan
knows nothing of how rounds run, placement nothing of round modes, the modes nothing of the loop."""


def round_path_edges(sources: dict[str, str]) -> list[str]:
    edges = []
    for rank, importer in enumerate(ROUND_PATH):
        for imported in sorted(imported_modules(sources[importer], importer)):
            if imported in ROUND_PATH[rank:]:
                edges.append(f"{importer} imports {imported}, which comes after it")
    impure = [m for m in imported_modules(sources[ROUND_PATH[0]], ROUND_PATH[0]) if layer_of(m) != "core"]
    edges += [f"{ROUND_PATH[0]} imports {m}: the plan is a pure function of core types" for m in impure]
    return edges


def test_the_round_path_modules_import_only_those_before_them() -> None:
    assert round_path_edges(repository_sources()) == []


@pytest.mark.parametrize(
    "importer, planted",
    [
        ("gateway_svc.round_plan", "from gateway_svc.backends import VerifierBackend"),
        ("gateway_svc.placement", "from gateway_svc.round_modes import Rounds"),
        ("gateway_svc.round_modes", "from gateway_svc.generation import GatewayCore"),
        ("gateway_svc.request_state", "from gateway_svc.placement import Placement"),
    ],
)
def test_a_planted_round_path_import_is_caught(importer: str, planted: str) -> None:
    sources = repository_sources()
    sources[importer] += f"\n\ndef _planted():\n    {planted}\n"
    assert len(round_path_edges(sources)) == 1


@pytest.mark.parametrize(
    "importer, planted",
    [
        ("splitspec.config", "from verifier_svc.verifier import Verifier"),
        ("splitspec.models.runner", "import gateway_svc.server"),
        ("splitspec.rpc.wire", "from proposer_svc.proposer import Proposer"),
        ("verifier_svc.service", "from proposer_svc.ngram import NgramProposer"),
        ("gateway_svc.generation", "from verifier_svc.rejection_sampler import verify"),
        ("proposer_svc.ngram", "from splitspec.entrypoints.llm import LLM"),
        ("splitspec_kernels.dispatch", "from splitspec.errors import SplitspecError"),
        ("splitspec.sequence", "from splitspec import LLM"),
        ("splitspec.models.runner", "from ...gateway_svc import server"),
        ("splitspec.rpc.wire", "from ..entrypoints import llm"),
        ("splitspec.rpc", "from ..entrypoints.llm import LLM"),
        ("splitspec_kernels.dispatch", "from .. import splitspec"),
    ],
)
def test_a_planted_upward_import_is_caught(importer: str, planted: str) -> None:
    sources = repository_sources()
    sources[importer] += f"\n\ndef _planted():\n    {planted}\n"
    assert len(upward_edges(sources)) == 1
