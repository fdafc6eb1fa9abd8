"""The shape of a tree-shaped draft: each drafted token names its parent.

`parents[i]` is the index of token i's parent among the draft's tokens, or -1 when token i directly
follows the sequence's last committed token (a root child). Parents come before their children, so
the first n tokens of a draft are a draft too. A linear draft is the chain [-1, 0, 1, ...].

Siblings (tokens with one parent) are verified together (verifier_svc.rejection_sampler.verify_tree):
either all one-hot (q None) with distinct tokens, or all drawn from q, each with the q it was drawn
from given the siblings drawn before it.
"""

from __future__ import annotations

import torch

ROOT = -1


def chain(n: int) -> list[int]:
    return list(range(-1, n - 1))


def is_chain(parents: list[int]) -> bool:
    return all(p == i - 1 for i, p in enumerate(parents))


def check_parents(parents: list[int], num_tokens: int) -> str | None:
    """None when `parents` shapes a draft of num_tokens tokens, else what is wrong with it."""
    if len(parents) != num_tokens:
        return f"{len(parents)} parents for {num_tokens} tokens"
    for i, p in enumerate(parents):
        if not ROOT <= p < i:
            return f"token {i} has parent {p}: a parent is -1 or an earlier token"
    return None


def depths(parents: list[int]) -> list[int]:
    """Each token's depth: 1 for a root child (one position after the last committed token)."""
    out: list[int] = []
    for p in parents:
        out.append(1 if p == ROOT else out[p] + 1)
    return out


def children(parents: list[int]) -> dict[int, list[int]]:
    """node -> its children in draft order; ROOT's are the root children. Leaves are absent."""
    kids: dict[int, list[int]] = {}
    for i, p in enumerate(parents):
        kids.setdefault(p, []).append(i)
    return kids


def ancestors_mask(parents: list[int]) -> torch.Tensor:
    """[n, n] bool: row i is True at i and at each of its ancestors (what token i attends to among the
    draft's tokens)."""
    n = len(parents)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p != ROOT:
            mask[i] = mask[p]
        mask[i, i] = True
    return mask


def path_to(parents: list[int], node: int) -> list[int]:
    """The tokens from a root child down to `node`, in order (empty for ROOT)."""
    path = []
    while node != ROOT:
        path.append(node)
        node = parents[node]
    return path[::-1]
