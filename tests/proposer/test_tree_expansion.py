"""EAGLE-2's dynamic tree (proposer_svc.tree_expansion) driven by a made-up drafter: the shape rules a
verifier relies on, and the choice of the likeliest paths."""

from __future__ import annotations

import math
import random

import hypothesis.strategies as st
import torch
from hypothesis import given, settings

from proposer_svc.tree_expansion import TreeExpansion
from splitspec import draft_tree
from splitspec.draft_tree import ROOT

VOCAB = 12


def _drafter(seed: int, peak: float):
    """probs(path): a fixed distribution per path, peaked on one token by `peak`."""

    def probs(path: tuple[int, ...]) -> torch.Tensor:
        rng = random.Random(hash((seed, path)))
        weights = torch.tensor([rng.random() for _ in range(VOCAB)], dtype=torch.float64)
        weights[rng.randrange(VOCAB)] += peak
        weights[rng.randrange(VOCAB)] = 0.0  # some tokens have no chance
        return weights / weights.sum()

    return probs


def _grow(tree: TreeExpansion, probs, excluded: tuple[int, ...] = ()) -> int:
    """Run the expansion as a drafter does; return how many levels were expanded after the root."""
    tree.expand(ROOT, probs(()), excluded)
    levels = 0
    while frontier := tree.frontier():
        levels += 1
        fed = tree.path_nodes(frontier)
        assert fed[-len(frontier) :] == frontier
        parents = tree.parents_within(fed)
        assert draft_tree.check_parents(parents, len(fed)) is None
        for node in frontier:
            path = tuple(tree.tokens_of([fed[i] for i in draft_tree.path_to(parents, fed.index(node))]))
            tree.expand(node, probs(path))
    return levels


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    budget=st.integers(1, 16),
    width=st.integers(2, 4),
    peak=st.sampled_from([0.0, 2.0, 50.0]),
    excluded=st.lists(st.integers(0, VOCAB - 1), max_size=2),
)
def test_the_draft_is_a_valid_tree_of_the_likeliest_found_paths(seed, budget, width, peak, excluded) -> None:
    probs = _drafter(seed, peak)
    tree = TreeExpansion(budget, width)
    _grow(tree, probs, tuple(excluded))
    draft = tree.draft()
    tokens, parents = draft.token_ids, draft.parents
    assert 0 < len(tokens) <= budget
    assert draft_tree.check_parents(parents, len(tokens)) is None
    for kids in draft_tree.children(parents).values():
        assert len(kids) <= width
        assert len({tokens[k] for k in kids}) == len(kids), "siblings are distinct tokens"
    assert not {tokens[k] for k in draft_tree.children(parents)[ROOT]} & set(excluded)
    chances = []
    for node in range(len(tokens)):
        path = [tokens[i] for i in draft_tree.path_to(parents, node)]
        chance = math.prod(float(probs(tuple(path[:d]))[t]) for d, t in enumerate(path))
        chances.append(chance)
        assert chance > 0
    assert chances == sorted(chances, reverse=True), "likeliest first, so each node's first child is its likeliest"
    found = sorted((n.chance for n in tree.nodes), reverse=True)
    assert chances == found[: len(tokens)]


def test_a_certain_drafter_drafts_a_chain_of_the_budget() -> None:
    def certain(path):
        probs = torch.zeros(VOCAB, dtype=torch.float64)
        probs[len(path) % VOCAB] = 1.0
        return probs

    tree = TreeExpansion(budget=6, width=3)
    assert _grow(tree, certain) == 5
    draft = tree.draft()
    tokens, parents = draft.token_ids, draft.parents
    assert tokens == [0, 1, 2, 3, 4, 5] and draft_tree.is_chain(parents)


def test_an_unsure_first_token_gets_branches_and_expansion_stops_when_nothing_deeper_could_enter() -> None:
    """Two first tokens at 0.5 each, then every path certain: the draft holds both branches, four deep
    each, and no level is expanded once its nodes cannot beat the budget's last."""

    def split(path):
        probs = torch.zeros(VOCAB, dtype=torch.float64)
        if not path:
            probs[[3, 7]] = 0.5
        else:
            probs[(path[0] + len(path)) % VOCAB] = 1.0
        return probs

    tree = TreeExpansion(budget=8, width=2)
    levels = _grow(tree, split)
    parents = tree.draft().parents
    assert len(draft_tree.children(parents)[ROOT]) == 2
    assert sorted(draft_tree.depths(parents)) == [1, 1, 2, 2, 3, 3, 4, 4]
    assert levels == 3


def test_a_tree_never_grows_deeper_than_the_room_left() -> None:
    tree = TreeExpansion(budget=10, width=2, max_depth=3)
    _grow(tree, _drafter(1, 50.0))
    assert max(draft_tree.depths(tree.draft().parents)) <= 3


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    budget=st.integers(1, 16),
    width=st.integers(2, 4),
    peak=st.sampled_from([0.0, 50.0]),
    acceptance=st.sampled_from([0.05, 0.5, 0.95]),
)
def test_drawn_siblings_come_in_the_order_drawn_each_with_the_q_it_was_drawn_from(
    seed, budget, width, peak, acceptance
) -> None:
    """What recursive rejection sampling without replacement relies on (verify_tree): the k-th sibling
    in the draft is the k-th drawn, its q is the drafter's without the k - 1 drawn before it, and the
    draft never keeps a sibling without the ones drawn before it."""
    probs = _drafter(seed, peak)
    generator = torch.Generator().manual_seed(seed)
    tree = TreeExpansion(budget, width)
    first_noise = torch.empty(VOCAB, dtype=torch.float64).exponential_(generator=generator)
    tree.expand_drawn(ROOT, probs(()), first_noise, (acceptance, 1 - acceptance))
    while frontier := tree.frontier():
        for node in frontier:
            path = tuple(tree.tokens_of([n for n in _ancestry(tree, node)]))
            noise = torch.empty(VOCAB, dtype=torch.float64).exponential_(generator=generator)
            tree.expand_drawn(node, probs(path), noise, (acceptance, 1 - acceptance))
    draft = tree.draft()
    assert draft_tree.check_parents(draft.parents, len(draft.token_ids)) is None
    drawn_under: dict[int, list[int]] = {}
    for i, n in enumerate(tree.nodes):
        drawn_under.setdefault(n.parent, []).append(i)
    behind = _draft_nodes(tree, draft)
    assert [tree.nodes[n].token for n in behind] == draft.token_ids
    in_draft = {ROOT: []} | {behind[i]: [] for i in range(len(behind))}
    for i, parent in enumerate(draft.parents):
        in_draft[ROOT if parent == ROOT else behind[parent]].append(behind[i])  # in draft order
    for parent, siblings in drawn_under.items():
        kept = in_draft.get(parent, [])
        assert kept == siblings[: len(kept)], "siblings out of the order drawn, or one kept without those before"
        path = () if parent == ROOT else tuple(tree.tokens_of(_ancestry(tree, parent)))
        q = probs(path).clone()
        for i in siblings:
            expected = q / q.sum()
            assert torch.allclose(tree.nodes[i].q.dense(VOCAB), expected)
            assert expected[tree.nodes[i].token] > 0
            q[tree.nodes[i].token] = 0.0
    for kids in draft_tree.children(draft.parents).values():
        assert len({draft.token_ids[k] for k in kids}) == len(kids) <= width


def _ancestry(tree: TreeExpansion, node: int) -> list[int]:
    """The nodes from the root's child down to `node`."""
    out = []
    while node != ROOT:
        out.append(node)
        node = tree.nodes[node].parent
    return out[::-1]


def _draft_nodes(tree: TreeExpansion, draft) -> list[int]:
    """The tree's node behind each token of its draft (draft order is by chance, then depth, then index)."""
    return sorted(range(len(tree.nodes)), key=lambda i: (-tree.nodes[i].chance, tree.nodes[i].depth, i))[
        : len(draft.token_ids)
    ]
