"""Presence, frequency and repetition penalties: each verify row is penalised by exactly the tokens a
plain decoding step at its position would count, so speculation with penalties is plain decoding with
penalties, greedy and seeded (splitspec.token_penalties)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from shaped_logits import assert_speculation_is_plain_decoding, outputs

from splitspec import SamplingParams, draft_tree
from splitspec.errors import SplitspecError
from splitspec.token_penalties import TokenPenalties

VOCAB = 12
MAX_TOKENS = 32

penalty_cases = st.fixed_dictionaries(
    {
        "presence": st.sampled_from([0.0, 0.5, -1.25, 2.0]),
        "frequency": st.sampled_from([0.0, 0.3, -0.7, 1.5]),
        "repetition": st.sampled_from([1.0, 1.3, 0.6, 2.0]),
    }
)


def _vllm_formula(logits: torch.Tensor, prompt: list[int], output: list[int], p: dict) -> torch.Tensor:
    """One row's penalties as vLLM writes them, in float64, token by token."""
    row = logits.to(torch.float64).clone()
    for token in range(len(row)):
        if token in prompt or token in output:
            row[token] = row[token] / p["repetition"] if row[token] > 0 else row[token] * p["repetition"]
        row[token] -= p["frequency"] * output.count(token)
        row[token] -= p["presence"] * (token in output)
    return row


@settings(max_examples=60, deadline=None)
@given(
    tokens=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=12),
    data=st.data(),
    draft=st.lists(st.integers(0, VOCAB - 1), max_size=5),
    penalties=penalty_cases,
)
def test_each_verify_row_is_penalised_as_the_plain_step_at_its_position(tokens, data, draft, penalties):
    prompt_length = data.draw(st.integers(1, len(tokens)))
    rule = TokenPenalties(penalties["presence"], penalties["frequency"], penalties["repetition"], prompt_length)
    logits = torch.randn(len(draft) + 1, VOCAB, generator=torch.Generator().manual_seed(len(tokens) + len(draft)))
    verified = logits.clone()
    rule.apply(verified, tokens, draft)
    for j in range(len(draft) + 1):
        plain = logits[j : j + 1].clone()
        rule.apply(plain, tokens + draft[:j], [])  # a K=0 step after committing the draft's first j tokens
        assert torch.equal(verified[j], plain[0])
        history = tokens + draft[:j]
        expected = _vllm_formula(logits[j], history[:prompt_length], history[prompt_length:], penalties)
        torch.testing.assert_close(verified[j].to(torch.float64), expected, rtol=1e-6, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(tokens=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=8), data=st.data(), penalties=penalty_cases)
def test_each_row_of_a_tree_is_penalised_as_the_plain_step_after_its_own_path(tokens, data, penalties):
    n = data.draw(st.integers(1, 6))
    parents = [data.draw(st.integers(-1, i - 1)) for i in range(n)]
    draft = data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=n, max_size=n))
    rule = TokenPenalties(penalties["presence"], penalties["frequency"], penalties["repetition"], 1)
    logits = torch.randn(n + 1, VOCAB, generator=torch.Generator().manual_seed(n))
    verified = logits.clone()
    rule.apply(verified, tokens, draft, parents)
    for row, node in enumerate([draft_tree.ROOT, *range(n)]):
        plain = logits[row : row + 1].clone()
        rule.apply(plain, tokens + [draft[i] for i in draft_tree.path_to(parents, node)], [])
        torch.testing.assert_close(verified[row], plain[0])


def test_penalties_leave_banned_tokens_banned_and_are_off_at_their_neutral_values():
    logits = torch.tensor([[float("-inf"), 1.0, -1.0, 2.0]])
    TokenPenalties(-2.0, -2.0, 0.5, 1).apply(logits, [0, 0, 1, 2], [])
    assert logits[0, 0] == float("-inf")
    assert TokenPenalties.for_request(SamplingParams(), 3) is None
    assert TokenPenalties.for_request(SamplingParams(presence_penalty=0.5), 3) == TokenPenalties(0.5, 0.0, 1.0, 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"presence_penalty": 2.5},
        {"frequency_penalty": -2.01},
        {"presence_penalty": float("nan")},
        {"frequency_penalty": True},
        {"repetition_penalty": 0},
        {"repetition_penalty": -1.0},
        {"repetition_penalty": float("inf")},
    ],
)
def test_penalties_out_of_range_are_refused_with_their_name(kwargs):
    with pytest.raises(SplitspecError, match=next(iter(kwargs))):
        SamplingParams(**kwargs)


PROMPTS = [[5, 9, 5, 9, 5, 9, 5], [17, 3, 88, 17, 3, 88, 17], [200, 201, 202, 203]]
PENALTIES = [
    {"repetition_penalty": 1.6},
    {"frequency_penalty": 1.2},
    {"presence_penalty": 1.5, "frequency_penalty": 0.4, "repetition_penalty": 1.2},
]


@pytest.mark.parametrize("penalties", PENALTIES, ids=lambda p: ",".join(p))
def test_speculation_with_penalties_is_plain_decoding_with_them(plain, speculative, penalties):
    greedy = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, **penalties)
    unpenalised = outputs(plain, PROMPTS, [SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)] * 3)
    penalised = outputs(plain, PROMPTS, [greedy] * 3)
    assert penalised != unpenalised  # the penalties change what the target says
    seeded = [
        SamplingParams(temperature=0.8, max_tokens=MAX_TOKENS, ignore_eos=True, seed=40 + i, **penalties)
        for i in range(3)
    ]
    plain_seeded = outputs(plain, PROMPTS, seeded)
    assert_speculation_is_plain_decoding(speculative, PROMPTS, greedy, penalised, seeded, plain_seeded)


def test_repetition_penalty_counts_the_prompt_and_presence_only_the_output(plain):
    """The first output token: only the repetition penalty can change it, since nothing is output yet."""
    first = SamplingParams(temperature=0, max_tokens=1)
    base = outputs(plain, PROMPTS, [first] * 3)
    assert outputs(plain, PROMPTS, [SamplingParams(temperature=0, max_tokens=1, presence_penalty=2.0)] * 3) == base
    strong = SamplingParams(temperature=0, max_tokens=1, repetition_penalty=50.0)
    assert all(out[0] not in prompt for out, prompt in zip(outputs(plain, PROMPTS, [strong] * 3), PROMPTS))
