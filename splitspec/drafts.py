"""The vocabulary drafters and the verify pass share: what is asked for, what is proposed, and which
of the target's hidden states a drafter reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from splitspec import draft_tree
from splitspec.sparse_distribution import SparseDistribution
from splitspec.str_enum import StrEnum


class HiddenStates(StrEnum):
    """What a drafter reads of the target's final hidden states: nothing; the one behind each
    sequence's last token (MLP speculator); or the one behind every committed token (EAGLE, which
    attends over them)."""

    NONE = "none"
    LAST = "last"
    ALL = "all"


@dataclass
class DraftRequest:
    """Draft up to `num_tokens` tokens after the committed `token_ids` of `seq_id`.

    `temperature` 0 asks for deterministic (argmax) drafts; otherwise a drafter that samples uses the
    request's `seed` streams so drafts are reproducible.
    """

    seq_id: str
    token_ids: list[int]
    num_tokens: int
    temperature: float = 0.0
    top_k: int = -1
    seed: int = 0
    hidden_state: torch.Tensor | None = None
    """For drafters that read the target's final hidden states (Proposer.hidden_states): LAST, the
    state [hidden] at the position that produced the last of `token_ids`; ALL, the states [n, hidden]
    of the positions that produced the last n of `token_ids` not given before. None when the target has
    produced none for this sequence since the last request."""
    num_prompt_tokens: int = 0
    """How many of `token_ids` are the prompt (0: not known); drafters that remember past outputs
    (suffix) keep only what follows it."""
    num_assumed: int = 0
    """A draft ahead: the last `num_assumed` of `token_ids` are not committed but assumed (the draft
    being verified), so a drafter keeps no state built on them as if it were final."""
    excluded_first: tuple[int, ...] = ()
    """A draft ahead for an outcome where the verifier rejects these tokens right after `token_ids`: the
    first token drafted is none of them (a drafter guesses its next best, or drafts nothing)."""
    tree_width: int = 1
    """The most children a drafted token (or the last committed one) may have: 1 asks for a chain; more
    allows a tree (Draft.parents) of at most `num_tokens` tokens. Drafters that cannot branch draft chains."""


@dataclass
class Draft:
    """Proposed tokens; `q[i]` is the exact distribution token i was drawn from, None for one-hot.
    `parents`: a tree-shaped draft's parent of each token (splitspec.draft_tree); None for a chain."""

    token_ids: list[int] = field(default_factory=list)
    q: list[SparseDistribution | None] = field(default_factory=list)
    parents: list[int] | None = None

    @property
    def is_tree(self) -> bool:
        return self.parents is not None and not draft_tree.is_chain(self.parents)

    def first(self, n: int) -> Draft:
        """The draft's first n tokens (a tree stays a tree: parents come before their children)."""
        if n >= len(self.token_ids):
            return self
        return Draft(self.token_ids[:n], self.q[:n], None if self.parents is None else self.parents[:n])

    def main_chain(self) -> Draft:
        """A tree's path through each node's first child: the chain it drafts when trees cannot be verified."""
        if not self.is_tree:
            return self
        path, kids, node = [], draft_tree.children(self.parents), draft_tree.ROOT
        while node in kids:
            node = kids[node][0]
            path.append(node)
        return Draft([self.token_ids[i] for i in path], [self.q[i] for i in path])
