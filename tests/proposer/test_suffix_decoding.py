"""Suffix decoding: the suffix tree against brute force, the drafter's memory of past outputs, and
losslessness in-process."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proposer_svc.service import ProposerService
from proposer_svc.suffix import SuffixProposer
from proposer_svc.suffix_tree import SuffixTree
from splitspec import LLM, SamplingParams, draft_tree
from splitspec.config import build_speculative_config
from splitspec.drafts import DraftRequest
from splitspec.errors import SplitspecError
from splitspec.suffix_settings import SuffixSettings


def occurrences(texts: list[list[int]], pattern: list[int]) -> int:
    n = len(pattern)
    return sum(1 for text in texts for i in range(len(text) - n + 1) if text[i : i + n] == pattern)


def best_drafts(texts: list[list[int]], context: list[int], depth: int, limit: int, factor: float, min_prob: float):
    """For each match length: every draft the brute-force counts allow (ties in the most frequent
    continuation branch) as (tokens, probs). The tree's draft is one of those of the best match."""

    def follow(match: list[int], drafted: list[int], budget: int):
        total = occurrences(texts, match)
        if budget == 0 or len(match) + len(drafted) >= depth:
            return [([], [])]
        counts = {}
        for text in texts:
            for i in range(len(text) - len(match) - len(drafted)):
                if text[i : i + len(match) + len(drafted)] == match + drafted:
                    token = text[i + len(match) + len(drafted)]
                    counts[token] = counts.get(token, 0) + 1
        if not counts:
            return [([], [])]
        top = max(counts.values())
        prob = top / total
        if prob < min_prob:
            return [([], [])]
        found = []
        for token in (t for t, c in counts.items() if c == top):
            for tokens, probs in follow(match, drafted + [token], budget - 1):
                found.append(([token] + tokens, [prob] + probs))
        return found

    context = context[-depth:]
    by_match = {}
    for m in range(1, len(context)):
        match = context[len(context) - m :]
        if not occurrences(texts, match):
            break
        by_match[m] = follow(match, [], min(limit, int(m * factor + 1e-6)))
    return by_match


texts_strategy = st.lists(st.lists(st.integers(0, 3), max_size=14), min_size=1, max_size=5)


@settings(max_examples=150, deadline=None)
@given(texts=texts_strategy, depth=st.integers(1, 6), removed=st.sets(st.integers(0, 4)), data=st.data())
def test_counts_are_the_occurrences_in_the_texts_held(texts, depth, removed, data):
    tree = SuffixTree(depth)
    for i, text in enumerate(texts):
        half = len(text) // 2  # grown in two steps, as outputs arrive
        tree.extend(i, text[:half])
        tree.extend(i, text[half:])
    kept = []
    for i, text in enumerate(texts):
        if i in removed:
            tree.remove(i)
        else:
            kept.append(text)
    for pattern in data.draw(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=depth), max_size=20)):
        assert tree.count(pattern) == occurrences(kept, pattern)
    for i in range(len(texts)):
        if i not in removed:
            tree.remove(i)
    assert tree.num_nodes() == 1 and tree.count([]) == 0


@settings(max_examples=150, deadline=None)
@given(
    texts=texts_strategy,
    context=st.lists(st.integers(0, 3), min_size=1, max_size=8),
    depth=st.integers(2, 7),
    limit=st.integers(1, 6),
    factor=st.sampled_from([0.5, 1.0, 2.0]),
    min_prob=st.sampled_from([0.0, 0.1, 0.5]),
)
def test_a_speculation_is_the_best_continuation_the_counts_justify(texts, context, depth, limit, factor, min_prob):
    tree = SuffixTree(depth)
    for i, text in enumerate(texts):
        tree.extend(i, text)
    got = tree.speculate(context, limit, factor, min_prob)
    by_match = best_drafts(texts, context, depth, limit, factor, min_prob)
    if not got.token_ids:
        assert all(tokens == [] for drafts in by_match.values() for tokens, _ in drafts)
        return
    assert any(
        tokens == got.token_ids and probs == pytest.approx(got.probs) for tokens, probs in by_match[got.match_len]
    )
    assert got.score == pytest.approx(sum(got.probs))
    # no match length offers a draft whose every tie-break scores higher
    assert all(got.score >= min(sum(p) for _, p in drafts) - 1e-9 for drafts in by_match.values())


def continuation_estimates(texts: list[list[int]], match: list[int], depth: int) -> list[tuple[list[int], float]]:
    """Every continuation x of `match` the texts hold within the depth, with its estimate
    occurrences(match + x) / occurrences(match) (the product of the tree's count ratios along x)."""
    total, found, frontier = occurrences(texts, match), [], [[]]
    while frontier:
        x = frontier.pop()
        for token in range(4):
            longer = x + [token]
            if len(match) + len(longer) <= depth and (n := occurrences(texts, match + longer)):
                found.append((longer, n / total))
                frontier.append(longer)
    return found


@settings(max_examples=150, deadline=None)
@given(
    texts=texts_strategy,
    context=st.lists(st.integers(0, 3), min_size=1, max_size=8),
    depth=st.integers(2, 7),
    limit=st.integers(1, 8),
    width=st.integers(1, 4),
    factor=st.sampled_from([0.5, 1.0, 2.0]),
    min_prob=st.sampled_from([0.0, 0.1, 0.5]),
)
def test_a_tree_speculation_holds_the_likeliest_continuations(texts, context, depth, limit, width, factor, min_prob):
    """Each token's estimate is how often its path followed the match; parents come first, siblings are
    distinct and at most `width`; with every child allowed (width 4, the vocabulary) the tree holds the
    likeliest continuations of its match and no match length offers likelier ones; width 1 is the chain."""
    tree = SuffixTree(depth)
    for i, text in enumerate(texts):
        tree.extend(i, text)
    got = tree.speculate_tree(context, limit, width, factor, min_prob)
    if width == 1:
        assert got.token_ids == tree.speculate(context, limit, factor, min_prob).token_ids
    if not got.token_ids:
        return
    match = context[-depth:][-got.match_len :]
    assert draft_tree.check_parents(got.parents, len(got.token_ids)) is None
    for kids in draft_tree.children(got.parents).values():
        assert len(kids) <= width and len({got.token_ids[k] for k in kids}) == len(kids)
    assert got.probs == sorted(got.probs, reverse=True) and min(got.probs) >= min_prob
    assert len(got.token_ids) <= min(limit, int(got.match_len * factor + 1e-6))
    for node, prob in enumerate(got.probs):
        path = [got.token_ids[i] for i in draft_tree.path_to(got.parents, node)]
        assert len(match) + len(path) <= depth
        assert prob == pytest.approx(occurrences(texts, match + path) / occurrences(texts, match))
    if width == 4:
        context = context[-depth:]
        for m in range(1, len(context)):
            if not occurrences(texts, context[-m:]):
                break
            budget = min(limit, int(m * factor + 1e-6))
            best = sorted((p for _, p in continuation_estimates(texts, context[-m:], depth) if p >= min_prob))
            best = best[::-1][:budget]
            assert got.score >= sum(best) - 1e-9
            if m == got.match_len:
                assert got.probs == pytest.approx(best)


def request(seq_id: str, tokens: list[int], num_prompt_tokens: int, k: int = 8, assumed: int = 0) -> DraftRequest:
    return DraftRequest(seq_id, tokens, k, num_prompt_tokens=num_prompt_tokens, num_assumed=assumed)


def serve(proposer: SuffixProposer, seq_id: str, prompt: list[int], output: list[int]) -> None:
    """A finished request: its output committed a token at a time, then released."""
    for n in range(len(output) + 1):
        proposer.propose([request(seq_id, prompt + output[:n], len(prompt))])
    proposer.release(seq_id)


ANSWER = [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51]


def test_a_repeated_request_drafts_the_earlier_answer():
    proposer = SuffixProposer(SuffixSettings())
    serve(proposer, "first", [1, 2, 3], ANSWER)
    draft = proposer.propose([request("again", [9, 1, 2, 3] + ANSWER[:4], 4)])[0]
    assert draft.token_ids == ANSWER[4:8]  # a match of 4 tokens drafts 4
    assert draft.q == [None] * 4  # one-hot: sampled requests stay exact


def test_only_outputs_enter_the_global_tree_and_they_stay_after_release():
    proposer = SuffixProposer(SuffixSettings())
    serve(proposer, "first", [60, 61, 62, 63], ANSWER)
    assert proposer.global_tree.num_tokens == len(ANSWER)
    assert proposer.propose([request("other", [60, 61, 62], 3)])[0].token_ids == []  # the prompt was not kept


def test_without_cached_requests_only_the_request_s_own_text_is_drafted_from():
    proposer = SuffixProposer(SuffixSettings(max_cached_requests=0))
    serve(proposer, "first", [1, 2, 3], ANSWER)
    assert proposer.num_cached_requests == 0 and proposer.global_tree.num_tokens == 0
    assert proposer.propose([request("again", [1, 2, 3] + ANSWER[:4], 3)])[0].token_ids == []
    own = [7, 8, 9, 10, 11, 7, 8]
    assert proposer.propose([request("own", own, 5)])[0].token_ids == [9, 10]  # a 2-token match drafts 2


def test_the_oldest_outputs_are_evicted_first():
    proposer = SuffixProposer(SuffixSettings(max_cached_requests=2))
    answers = [[100 + 10 * i + j for j in range(8)] for i in range(3)]
    for i, answer in enumerate(answers):
        serve(proposer, f"r{i}", [1], answer)
    assert proposer.num_cached_requests == 2 and proposer.global_tree.num_tokens == 16
    assert [proposer.global_tree.count(answer) for answer in answers] == [0, 1, 1]
    # a new request takes a place too, so the next oldest goes
    assert proposer.propose([request("x", [5] + answers[2][:3], 1)])[0].token_ids == answers[2][3:6]
    assert [proposer.global_tree.count(answer) for answer in answers] == [0, 0, 1]


def test_a_draft_cut_by_the_tree_s_depth_goes_on_from_the_context_it_leads_to():
    proposer = SuffixProposer(SuffixSettings(max_tree_depth=4))
    serve(proposer, "first", [1], ANSWER)
    # alone, the best match (2 tokens) reaches the depth of 4 after 2 drafts
    assert proposer.global_tree.speculate(ANSWER[:4], 8, 1.0, 0.1).token_ids == ANSWER[4:6]
    assert proposer.propose([request("again", [9] + ANSWER[:4], 1, k=8)])[0].token_ids == ANSWER[4:12]


def test_a_draft_is_as_long_as_its_match_times_the_spec_factor_and_at_most_k():
    proposer = SuffixProposer(SuffixSettings(max_spec_factor=0.5))
    serve(proposer, "first", [1], ANSWER)
    assert len(proposer.propose([request("a", [9] + ANSWER[:6], 1)])[0].token_ids) == 3
    assert len(proposer.propose([request("b", [9] + ANSWER[:6], 1, k=2)])[0].token_ids) == 2


def test_drafting_stops_where_the_estimated_probability_falls_below_the_minimum():
    proposer = SuffixProposer(SuffixSettings(min_token_prob=0.4))
    # after 1, 2, 3 the text went on with 4 twice, with 5 once and with 6 once, then 7, 8 each time
    for i, tail in enumerate([4, 4, 5, 6]):
        serve(proposer, f"r{i}", [0], [1, 2, 3, tail, 7, 8])
    assert proposer.propose([request("a", [0, 1, 2, 3], 1)])[0].token_ids == [4, 7, 8]  # 4 at 0.5
    proposer = SuffixProposer(SuffixSettings(min_token_prob=0.6))
    for i, tail in enumerate([4, 4, 5, 6]):
        serve(proposer, f"r{i}", [0], [1, 2, 3, tail, 7, 8])
    assert proposer.propose([request("a", [0, 1, 2, 3], 1)])[0].token_ids == []


def test_a_draft_ahead_continues_assumed_tokens_without_keeping_them():
    proposer = SuffixProposer(SuffixSettings())
    serve(proposer, "first", [1], ANSWER)
    tokens = [9] + ANSWER[:3]
    draft = proposer.propose([request("a", tokens + ANSWER[3:6], 1, k=4, assumed=3)])[0]
    assert draft.token_ids == ANSWER[6:10]
    assert proposer.global_tree.num_tokens == len(ANSWER) + 3  # this request's committed output only


@pytest.mark.parametrize("start, kept", [(5, [40, 41, 42, 43, 44]), (4, [40, 41])])
def test_the_proposer_service_keeps_the_last_tokens_a_release_brings(start, kept):
    """The gateway's release carries the tokens committed since the last draft step; they are kept
    only when they continue what the proposer holds (start = its length)."""
    proposer = SuffixProposer(SuffixSettings())

    async def scenario() -> None:
        service = ProposerService(proposer, num_speculative_tokens=8)
        service.start()
        try:
            await service.draft(
                "s", committed_len=5, start=0, token_ids=[1, 2, 3, 40, 41], num_tokens=4, temperature=0, top_k=-1,
                seed=0, num_prompt_tokens=3,
            )  # fmt: skip
            await service.release("s", start, [42, 43, 44])
        finally:
            await service.close()

    asyncio.run(scenario())
    assert proposer.global_tree.num_tokens == len(kept) and proposer.global_tree.count(kept) == 1


def test_speculative_config_takes_vllm_s_suffix_keys_and_defaults():
    spec = build_speculative_config({"method": "suffix"})
    assert spec.num_speculative_tokens == 24 and spec.suffix == SuffixSettings() and not spec.adaptive
    spec = build_speculative_config(
        {
            "method": "suffix",
            "num_speculative_tokens": 8,
            "suffix_decoding_max_tree_depth": 16,
            "suffix_decoding_max_cached_requests": 0,
            "suffix_decoding_max_spec_factor": 2.0,
            "suffix_decoding_min_token_prob": 0.3,
        }
    )
    assert spec.suffix == SuffixSettings(16, 0, 2.0, 0.3)
    for bad, word in [
        ({"suffix_decoding_max_tree_depth": 0}, "max_tree_depth"),
        ({"suffix_decoding_max_cached_requests": -1}, "max_cached_requests"),
        ({"suffix_decoding_min_token_prob": 1.5}, "min_token_prob"),
        ({"suffix_decoding_max_spec_factor": float("nan")}, "max_spec_factor"),
        ({"model": "somewhere"}, "takes no"),
    ]:
        with pytest.raises(SplitspecError, match=word):
            build_speculative_config({"method": "suffix", **bad})


PROMPTS = [[5, 6, 7, 8, 9, 5, 6, 7], [17, 3], list(range(30, 60)), [100, 101, 102, 100, 101]]


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_repeated_requests_are_drafted_from_memory_and_equal_plain_decoding(tiny_llama, temperature):
    """Asked twice: the second time the drafter remembers the answers (greedy, or the same seeds), so
    long drafts are accepted; both times the output is plain decoding's, in batches of 4 and 1. The
    control remembers no past request (max_cached_requests=0): what each request's own text gives."""
    params = [
        SamplingParams(temperature=temperature, top_k=50, max_tokens=40, ignore_eos=True, seed=7 + i)
        for i in range(len(PROMPTS))
    ]
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    plain = [o.outputs[0].token_ids for o in LLM(str(tiny_llama)).generate(prompts, params, use_tqdm=False)]
    llm = LLM(str(tiny_llama), speculative_config={"method": "suffix", "num_speculative_tokens": 16})
    first = llm.generate(prompts, params, use_tqdm=False)
    again = [llm.generate([p], [sp], use_tqdm=False)[0] for p, sp in zip(prompts, params)]
    assert [o.outputs[0].token_ids for o in first] == plain
    assert [o.outputs[0].token_ids for o in again] == plain
    rounds = sum(o.spec_stats.num_rounds for o in again)
    accepted = sum(o.spec_stats.num_accepted_tokens for o in again)
    forgetful = LLM(
        str(tiny_llama),
        speculative_config={"method": "suffix", "num_speculative_tokens": 16, "suffix_decoding_max_cached_requests": 0},
    )
    forgetful.generate(prompts, params, use_tqdm=False)
    control = [forgetful.generate([p], [sp], use_tqdm=False)[0] for p, sp in zip(prompts, params)]
    assert [o.outputs[0].token_ids for o in control] == plain
    control_rounds = sum(o.spec_stats.num_rounds for o in control)
    control_accepted = sum(o.spec_stats.num_accepted_tokens for o in control)
    if temperature == 0:  # a one-hot draft of a sampled token is accepted with its probability only
        assert accepted >= 0.75 * sum(len(p) for p in plain) and rounds <= 0.2 * sum(len(p) for p in plain)
        assert control_accepted <= 0.5 * sum(len(p) for p in plain), (control_accepted, accepted)
        assert control_rounds >= 2 * rounds, (control_rounds, rounds)
    else:
        assert accepted > control_accepted, (accepted, control_accepted)


def test_a_tree_is_drafted_only_where_it_expects_more_accepted_tokens_than_the_chain():
    """Three continuations of one count each tie the chain (0.25 a token either way): the chain, which
    can draft on past the horizon. Where one branch is likelier deeper down than the chain's tail, a tree."""
    even = [5, 6, 7, 20, 5, 6, 7, 21, 5, 6, 7, 22, 5, 6, 7]
    uneven = [5, 6, 7, 20, 8, 1, 5, 6, 7, 20, 8, 2, 5, 6, 7, 20, 8, 3, 5, 6, 7, 21, 4, 5, 6, 7, 21, 9, 11, 5, 6, 7]
    drafts = [
        SuffixProposer(SuffixSettings()).propose([DraftRequest("s", p, 8, num_prompt_tokens=len(p), tree_width=3)])[0]
        for p in (even, uneven)
    ]
    assert drafts[0].token_ids == [20, 5, 6] and not drafts[0].is_tree
    assert drafts[1].token_ids == [20, 8, 21] and drafts[1].parents == [-1, 0, -1]
