"""EAGLE-2's dynamic draft tree for drafters that score every token (a draft model; later EAGLE heads).

A node's chance is the product of the drafter's probabilities along its path: how likely the drafter
thinks the whole path is. Each round expands the `width` likeliest nodes of the newest level, each into
its `width` likeliest children; expansion stops once no node of the newest level is likelier than the
`budget`-th likeliest node found (a child is never likelier than its parent, so nothing deeper could
enter the draft). The draft is the `budget` likeliest nodes: a set that holds every node's parent, in
order of decreasing chance, so parents come before their children and a node's first child is its
likeliest.

Siblings are distinct tokens, either
- the likeliest ones (`expand`), drafted one-hot (q None): the verifier then commits exactly the
  target's own draws (verifier_svc.rejection_sampler.verify_tree), greedy or seeded; or
- drawn from the drafter's q without replacement (`expand_drawn`), each with the distribution it was
  drawn from (q without the siblings drawn before it, renormalized), for recursive rejection sampling
  (verify_tree). Those must be tried in the order drawn: a sibling's chance is below the one drawn
  before it, so the draft keeps that order and never a sibling without the ones drawn before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from splitspec.draft_tree import ROOT
from splitspec.drafts import Draft
from splitspec.sparse_distribution import SparseDistribution


@dataclass(frozen=True)
class _Node:
    token: int
    parent: int
    chance: float
    depth: int
    q: SparseDistribution | None = None


class TreeExpansion:
    def __init__(self, budget: int, width: int, max_depth: int | None = None) -> None:
        """budget: the most tokens drafted; width: the most children per node; max_depth: the deepest a
        node may be (room left in the sequence), at most budget."""
        self.budget, self.width = budget, width
        self.max_depth = budget if max_depth is None else min(budget, max_depth)
        self.nodes: list[_Node] = []
        self._newest: list[int] = []

    def expand(
        self, node: int, probs: torch.Tensor, excluded: tuple[int, ...] = (), vocab: torch.Tensor | None = None
    ) -> None:
        """Add the `width` likeliest tokens under `probs` (the drafter's distribution after `node`, ROOT
        for the last committed token), skipping `excluded` and tokens of probability 0. vocab: the token
        id of each entry of probs (a drafter with a vocabulary of its own); None: its index."""
        parent = None if node == ROOT else self.nodes[node]
        depth = 1 if parent is None else parent.depth + 1
        if depth > self.max_depth:
            return
        chance = 1.0 if parent is None else parent.chance
        top = torch.topk(probs, min(self.width + len(excluded), probs.shape[-1]))
        taken = 0
        ids = top.indices if vocab is None else vocab[top.indices]
        for p, token in zip(top.values.tolist(), ids.tolist()):
            if taken == self.width or p <= 0:
                break
            if token not in excluded:
                self._newest.append(len(self.nodes))
                self.nodes.append(_Node(token, node, chance * p, depth))
                taken += 1

    def expand_drawn(
        self, node: int, probs: torch.Tensor, noise: torch.Tensor, acceptance: tuple[float, float]
    ) -> None:
        """Add `width` tokens drawn from `probs` (the drafter's q after `node`) without replacement, in
        the order of an exponential race (probs / noise, noise i.i.d. Exp(1)): the first is an exact
        draw from q, each next one an exact draw from q without those before it.

        A drawn token's chance is not its q: how likely rejection sampling keeps it depends on how close
        the target's distribution is to q, which q alone does not tell (a flat q the target shares keeps
        its first draw almost always). So the chances come from the sequence's measured `acceptance`
        (a1, a2): a first child is kept with a1, and each later one, tried once those before it failed,
        with a2 (Sequoia's model of acceptance by sibling rank): the j-th child is kept with
        a1 for j = 1, else (1 - a1)(1 - a2)^(j - 2) a2, capped at the chance of the one before it."""
        parent = None if node == ROOT else self.nodes[node]
        depth = 1 if parent is None else parent.depth + 1
        if depth > self.max_depth:
            return
        first, later = acceptance
        base = 1.0 if parent is None else parent.chance
        chance, left = base * first, base * (1.0 - first)  # left: the chance every child so far failed
        remaining = probs.to(torch.float64).clone()
        drawn = torch.topk(remaining / noise, min(self.width, int((remaining > 0).sum()))).indices.tolist()
        for token in drawn:
            support = torch.nonzero(remaining > 0).flatten()
            q = SparseDistribution(support, remaining[support] / remaining[support].sum())
            self._newest.append(len(self.nodes))
            self.nodes.append(_Node(token, node, chance, depth, q))
            remaining[token] = 0.0
            chance = min(chance, left * later)
            left *= 1.0 - later

    def frontier(self) -> list[int]:
        """The nodes to expand next, in draft order: the `width` likeliest of those the last expansions
        added, keeping only those that could still bring a child into the draft. Clears the newest level."""
        newest, self._newest = self._newest, []
        if len(self.nodes) >= self.budget:
            kth = sorted((n.chance for n in self.nodes), reverse=True)[self.budget - 1]
            newest = [i for i in newest if self.nodes[i].chance > kth]
        newest = [i for i in newest if self.nodes[i].depth < self.max_depth]
        return sorted(sorted(newest, key=lambda i: -self.nodes[i].chance)[: self.width])

    def path_nodes(self, frontier: list[int]) -> list[int]:
        """The frontier's nodes and all their ancestors, shallower first, the frontier last: what a tree
        pass feeds to score the frontier (its logits are the pass's last len(frontier) rows)."""
        needed: set[int] = set()
        for node in frontier:
            while node != ROOT and node not in needed:
                needed.add(node)
                node = self.nodes[node].parent
        ancestors = sorted(needed - set(frontier), key=lambda i: (self.nodes[i].depth, i))
        return ancestors + frontier

    def parents_within(self, fed: list[int]) -> list[int]:
        """Each fed node's parent as an index into `fed` (ROOT for a child of the last committed token)."""
        where = {node: i for i, node in enumerate(fed)}
        return [ROOT if self.nodes[n].parent == ROOT else where[self.nodes[n].parent] for n in fed]

    def tokens_of(self, fed: list[int]) -> list[int]:
        return [self.nodes[n].token for n in fed]

    def draft(self) -> Draft:
        """The `budget` likeliest nodes, likeliest first (siblings of equal chance in the order added)."""
        chosen = sorted(range(len(self.nodes)), key=lambda i: (-self.nodes[i].chance, self.nodes[i].depth, i))
        chosen = chosen[: self.budget]
        return Draft(self.tokens_of(chosen), [self.nodes[i].q for i in chosen], self.parents_within(chosen))
