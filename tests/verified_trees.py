"""Watch an in-process engine's verifier: every draft it verified as a tree, with the path it kept."""

from __future__ import annotations

from splitspec import LLM
from splitspec.drafts import Draft


def record_verified_trees(llm: LLM) -> list[tuple[Draft, list[int]]]:
    """A list that fills, as `llm` generates, with (draft, kept path) of each draft verified as a tree."""
    seen: list[tuple[Draft, list[int]]] = []
    verify = llm.engine.verifier.verify

    def recording(steps, *args, **kwargs):
        results = verify(steps, *args, **kwargs)
        seen.extend((draft, result.path) for (_, draft), result in zip(steps, results) if result.path is not None)
        return results

    llm.engine.verifier.verify = recording
    return seen
