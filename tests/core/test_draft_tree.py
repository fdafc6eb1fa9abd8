"""The shape of tree drafts (splitspec.draft_tree, Draft) and the n-gram index's trees."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given, settings

from splitspec import draft_tree
from splitspec.drafts import Draft
from splitspec.ngram_index import NgramIndex


@st.composite
def trees(draw, max_size: int = 12) -> list[int]:
    n = draw(st.integers(0, max_size))
    return [draw(st.integers(-1, i - 1)) for i in range(n)]


@given(trees())
def test_depths_paths_and_the_ancestor_mask_agree(parents: list[int]) -> None:
    assert draft_tree.check_parents(parents, len(parents)) is None
    depths, mask = draft_tree.depths(parents), draft_tree.ancestors_mask(parents)
    for node in range(len(parents)):
        path = draft_tree.path_to(parents, node)
        assert path[-1] == node and len(path) == depths[node]
        assert draft_tree.path_to(parents, path[0]) == path[:1] and parents[path[0]] == -1
        assert mask[node].nonzero().flatten().tolist() == sorted(path)
    kids = draft_tree.children(parents)
    assert sorted(c for cs in kids.values() for c in cs) == list(range(len(parents)))


def test_check_parents_names_what_is_wrong() -> None:
    assert "parent 1" in draft_tree.check_parents([-1, 1], 2)
    assert "parent -2" in draft_tree.check_parents([-2], 1)
    assert "3 parents for 2 tokens" == draft_tree.check_parents([-1, 0, 0], 2)
    assert draft_tree.is_chain(draft_tree.chain(5)) and not draft_tree.is_chain([-1, -1])


@given(trees(), st.integers(0, 12))
def test_a_draft_s_first_tokens_are_a_tree_and_its_main_chain_follows_first_children(parents, n) -> None:
    draft = Draft(list(range(100, 100 + len(parents))), [None] * len(parents), parents)
    first = draft.first(n)
    assert draft_tree.check_parents(first.parents, len(first.token_ids)) is None
    chain = draft.main_chain()
    kids, node = draft_tree.children(parents), -1
    for token in chain.token_ids:
        node = kids[node][0]
        assert token == 100 + node
    assert node not in kids and not chain.is_tree


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(0, 5), min_size=2, max_size=80),
    st.integers(1, 16),
    st.integers(1, 4),
    st.sets(st.integers(0, 5), max_size=2),
)
def test_ngram_trees_are_continuations_of_the_context(context, budget, width, excluded) -> None:
    """Every path of the tree is a continuation that followed an occurrence of the context's own last
    n-gram (n >= 1); budget and width hold; siblings differ; no root child is excluded."""
    index = NgramIndex(1, 3)
    index.extend(context)
    tokens, parents = index.lookup_tree(budget, width, excluded_first=tuple(excluded))
    assert len(tokens) <= budget and draft_tree.check_parents(parents, len(tokens)) is None
    for node, kids in draft_tree.children(parents).items():
        assert len(kids) <= width
        assert len({tokens[c] for c in kids}) == len(kids)
        if node == -1:
            assert not {tokens[c] for c in kids} & excluded
    occurrences = [e for e in range(1, len(context)) if context[e - 1] == context[-1]]
    for node in range(len(tokens)):
        path = [tokens[i] for i in draft_tree.path_to(parents, node)]
        assert any(context[e : e + len(path)] == path for e in occurrences), path
    if width == 1:
        assert draft_tree.is_chain(parents)
    if occurrences and any(context[e] not in excluded for e in occurrences):
        assert tokens, "a match was found but nothing drafted"
