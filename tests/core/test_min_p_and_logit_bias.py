"""min_p and logit_bias: each is vLLM's definition, applied to every verify row as to a plain
decoding step, so speculation with them is plain decoding with them, greedy and seeded
(splitspec.logits_processing)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from shaped_logits import assert_speculation_is_plain_decoding, outputs

from splitspec import SamplingParams
from splitspec.errors import SplitspecError
from splitspec.logits_processing import apply_logit_bias, apply_min_p

VOCAB = 12
MAX_TOKENS = 32
PROMPTS = [[5, 9, 5, 9, 5, 9, 5], [17, 3, 88, 17, 3, 88, 17], [200, 201, 202, 203]]


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    rows=st.integers(1, 5),
    min_p=st.sampled_from([0.0, 0.01, 0.1, 0.3, 0.7, 1.0]),
    temperature=st.sampled_from([0.3, 1.0, 2.5]),
)
def test_min_p_drops_exactly_the_tokens_vllm_drops(seed, rows, min_p, temperature):
    """vLLM's rule, on probabilities after temperature: drop p_i < min_p * max p."""
    logits = torch.randn(rows, VOCAB, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 3
    masked = logits.clone()
    apply_min_p(masked, min_p, temperature)
    probs = torch.softmax(logits / temperature, dim=-1)
    dropped = probs < min_p * probs.max(dim=-1, keepdim=True).values
    assert torch.equal(masked.isinf(), dropped)
    assert torch.equal(masked[~dropped], logits[~dropped])
    assert torch.equal(masked.argmax(-1), logits.argmax(-1))  # greedy never changes


def test_logit_bias_moves_only_its_tokens_on_every_row():
    logits = torch.zeros(3, VOCAB)
    apply_logit_bias(logits, {2: 5.0, 7: -100.0})
    expected = torch.zeros(3, VOCAB)
    expected[:, 2], expected[:, 7] = 5.0, -100.0
    assert torch.equal(logits, expected)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"min_p": 1.5}, "min_p must be a number in [0, 1]"),
        ({"min_p": -0.1}, "min_p must be"),
        ({"min_p": float("nan")}, "min_p must be"),
        ({"logit_bias": {3: 101}}, "logit_bias values must be numbers in [-100, 100]"),
        ({"logit_bias": {-1: 1.0}}, "logit_bias keys must be token ids"),
        ({"logit_bias": {"3": 1.0}}, "logit_bias keys must be token ids"),
        ({"logit_bias": [3]}, "logit_bias must be a dict"),
        ({"skip_special_tokens": "no"}, "skip_special_tokens must be true or false"),
    ],
)
def test_bad_values_are_refused_with_their_name(kwargs, words):
    with pytest.raises(SplitspecError) as caught:
        SamplingParams(**kwargs)
    assert words in str(caught.value)


def test_a_logit_bias_token_outside_the_vocabulary_is_refused(plain):
    vocab = plain.runner.vocab_size
    with pytest.raises(SplitspecError, match=f"logit_bias token ids must be in \\[0, {vocab}\\); got {vocab}"):
        plain.generate({"prompt_token_ids": [1, 2]}, SamplingParams(logit_bias={vocab: 1.0}), use_tqdm=False)


def test_speculation_with_logit_bias_and_min_p_is_plain_decoding_with_them(plain, speculative):
    greedy = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    unbiased = outputs(plain, PROMPTS, [greedy] * 3)
    favoured = {t: 4.0 for t in range(40, 60)}  # strong enough to win some positions, not all
    biased_params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logit_bias=favoured)
    biased = outputs(plain, PROMPTS, [biased_params] * 3)
    assert biased != unbiased  # the check below can fail
    assert any(t in favoured for out in biased for t in out)

    def seeded(**shaping) -> list[SamplingParams]:
        return [
            SamplingParams(temperature=1.5, max_tokens=MAX_TOKENS, ignore_eos=True, seed=60 + i, **shaping)
            for i in range(3)
        ]

    shaped = {"min_p": 0.3, "logit_bias": {7: 2.0, 8: -3.0}}
    plain_seeded = outputs(plain, PROMPTS, seeded(**shaped))
    assert plain_seeded != outputs(plain, PROMPTS, seeded(logit_bias=shaped["logit_bias"]))  # min_p changes draws
    assert_speculation_is_plain_decoding(speculative, PROMPTS, biased_params, biased, seeded(**shaped), plain_seeded)


def test_min_p_one_at_temperature_samples_only_the_greedy_tokens(plain, speculative):
    """min_p 1 keeps only the most likely token: sampling is then greedy decoding."""
    greedy = outputs(plain, PROMPTS, [SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)] * 3)
    only_best = [
        SamplingParams(temperature=1.0, max_tokens=MAX_TOKENS, ignore_eos=True, seed=i, min_p=1.0) for i in range(3)
    ]
    assert outputs(plain, PROMPTS, only_best) == greedy
    assert outputs(speculative["draft_model"], PROMPTS, only_best) == greedy
