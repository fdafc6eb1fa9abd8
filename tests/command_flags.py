"""Service commands as written in deployment files (compose, Kubernetes), read back as flags."""

from __future__ import annotations


def flags_of(argv: list[str]) -> dict[str, str]:
    """`serve-x --a 1 -k 5` -> {"--a": "1", "-k": "5"}; every flag these commands use takes a value."""
    pairs = argv[1:]
    assert len(pairs) % 2 == 0 and all(f.startswith("-") for f in pairs[::2]), argv
    flags = dict(zip(pairs[::2], pairs[1::2]))
    assert len(flags) == len(pairs) // 2, f"a flag is given twice in {argv}"
    return flags
