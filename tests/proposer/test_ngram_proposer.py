"""Prompt-lookup drafting: continue the most recent earlier occurrence of the longest matching suffix n-gram."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from proposer_svc.ngram import NgramProposer
from splitspec.drafts import DraftRequest


def propose(proposer: NgramProposer, tokens: list[int], k: int, seq_id: str = "s") -> list[int]:
    return proposer.propose([DraftRequest(seq_id, tokens, k)])[0].token_ids


def reference_lookup(tokens: list[int], min_n: int, max_n: int, k: int) -> list[int]:
    """Brute force: for n from max_n down to min_n, the latest earlier occurrence of the last n tokens."""
    size = len(tokens)
    for n in range(max_n, min_n - 1, -1):
        if n > size - 1:
            continue
        suffix = tokens[size - n :]
        for start in range(size - n - 1, -1, -1):  # start + n <= size - 1: never the suffix itself
            if tokens[start : start + n] == suffix:
                return tokens[start + n : start + n + k]
    return []


def test_proposes_the_continuation_of_the_earlier_occurrence():
    #         [1, 2, 3] ... suffix [1, 2, 3] -> continue with what followed it: 4, 5
    tokens = [1, 2, 3, 4, 5, 9, 1, 2, 3]
    assert propose(NgramProposer(1, 3), tokens, 2) == [4, 5]


def test_the_most_recent_occurrence_wins():
    tokens = [7, 8, 1, 7, 8, 2, 7, 8]
    assert propose(NgramProposer(1, 2), tokens, 1) == [2]


def test_a_longer_ngram_wins_over_a_more_recent_shorter_match():
    # suffix [5, 6]: the 2-gram occurred early (followed by 10); 6 alone occurred recently (followed by 20)
    tokens = [5, 6, 10, 11, 6, 20, 5, 6]
    assert propose(NgramProposer(1, 2), tokens, 1) == [10]
    assert propose(NgramProposer(1, 1), tokens, 1) == [20]


def test_ngrams_longer_than_prompt_lookup_max_are_not_used():
    # with max 1 only the last token is matched, so the most recent 3 wins even though [2, 3] matches earlier
    tokens = [2, 3, 40, 9, 3, 50, 2, 3]
    assert propose(NgramProposer(1, 1), tokens, 1) == [50]
    assert propose(NgramProposer(1, 2), tokens, 1) == [40]


def test_ngrams_shorter_than_prompt_lookup_min_are_not_used():
    tokens = [4, 9, 1, 2, 9]  # only the 1-gram [9] matches
    assert propose(NgramProposer(1, 3), tokens, 1) == [1]
    assert propose(NgramProposer(2, 3), tokens, 1) == []


def test_the_suffix_never_matches_itself():
    assert propose(NgramProposer(1, 4), [1, 2, 3, 4], 3) == []


def test_a_repeated_token_matches_its_previous_occurrence():
    # the last 3 of [3, 3, 3, 3] occurs earlier ending at position 3, continuing with the final 3
    assert propose(NgramProposer(1, 3), [3, 3, 3, 3], 5) == [3]


def test_fewer_than_k_tokens_when_the_continuation_runs_out():
    tokens = [1, 2, 3, 8, 1, 2]  # [1, 2] earlier is followed by only 3, 8, 1, 2
    assert propose(NgramProposer(1, 2), tokens, 10) == [3, 8, 1, 2]


def test_nothing_without_a_match():
    assert propose(NgramProposer(1, 4), [1, 2, 3, 4, 5], 5) == []
    assert propose(NgramProposer(1, 4), [1], 5) == []


def test_nothing_when_zero_tokens_are_asked_for():
    assert propose(NgramProposer(1, 2), [1, 2, 1], 0) == []


def test_every_proposed_token_is_one_hot():
    draft = NgramProposer(1, 2).propose([DraftRequest("s", [1, 2, 3, 4, 1, 2], 3)])[0]
    assert draft.token_ids == [3, 4, 1]
    assert draft.q == [None, None, None]


def test_one_draft_per_request_in_order():
    proposer = NgramProposer(1, 2)
    drafts = proposer.propose(
        [DraftRequest("a", [1, 2, 1], 1), DraftRequest("b", [5, 6, 7], 2), DraftRequest("c", [4, 9, 4], 1)]
    )
    assert [d.token_ids for d in drafts] == [[2], [], [9]]


def test_release_forgets_the_sequence():
    proposer = NgramProposer(1, 2)
    propose(proposer, [1, 2, 3, 1], 2, seq_id="s")
    proposer.release("s")
    assert "s" not in proposer._indexes
    proposer.release("never-seen")  # releasing an unknown id is harmless


def test_a_reused_id_with_an_unrelated_context_starts_over():
    proposer = NgramProposer(1, 2)
    assert propose(proposer, [1, 2, 3, 4, 1, 2], 2) == [3, 4]
    # same id, a context that is not an extension: nothing from the old tokens may be proposed
    assert propose(proposer, [9, 8, 1, 2], 2) == []
    assert propose(proposer, [9, 8, 1, 2, 9], 2) == [8, 1]


def test_a_shorter_context_for_the_same_id_starts_over():
    proposer = NgramProposer(1, 2)
    assert propose(proposer, [5, 6, 7, 5, 6, 8, 5], 1) == [6]
    assert propose(proposer, [5, 6, 7, 5], 2) == [6, 7]


@settings(max_examples=300, deadline=None)
@given(
    tokens=st.lists(st.integers(0, 3), min_size=1, max_size=60),
    min_n=st.integers(1, 3),
    extra_n=st.integers(0, 3),
    k=st.integers(1, 6),
)
def test_matches_the_brute_force_reference(tokens, min_n, extra_n, k):
    max_n = min_n + extra_n
    assert propose(NgramProposer(min_n, max_n), tokens, k) == reference_lookup(tokens, min_n, max_n, k)


@settings(max_examples=200, deadline=None)
@given(
    prompt=st.lists(st.integers(0, 3), min_size=1, max_size=20),
    steps=st.lists(st.lists(st.integers(0, 3), max_size=6), min_size=1, max_size=8),
    min_n=st.integers(1, 3),
    extra_n=st.integers(0, 3),
    k=st.integers(1, 6),
)
def test_incremental_updates_equal_a_fresh_proposer_on_the_full_context(prompt, steps, min_n, extra_n, k):
    max_n = min_n + extra_n
    incremental = NgramProposer(min_n, max_n)
    tokens = list(prompt)
    for committed in [[]] + steps:  # a round may commit several tokens, or (after preemption) none
        tokens = tokens + committed
        expected = reference_lookup(tokens, min_n, max_n, k)
        assert propose(incremental, tokens, k) == expected
        assert propose(NgramProposer(min_n, max_n), tokens, k) == expected
