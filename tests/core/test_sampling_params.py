"""SamplingParams rejects bad values with an error naming the field, and normalises the rest."""

from __future__ import annotations

import pytest

from splitspec import LLM, SamplingParams
from splitspec.errors import SplitspecError


@pytest.mark.parametrize("temperature", [-0.1, float("nan"), "0.7", None])
def test_temperature_must_be_a_number_at_least_zero(temperature):
    with pytest.raises(SplitspecError, match="temperature must be a number >= 0"):
        SamplingParams(temperature=temperature)


@pytest.mark.parametrize("top_p", [0, -0.5, 1.01, float("nan"), "0.9"])
def test_top_p_must_be_in_zero_one(top_p):
    with pytest.raises(SplitspecError, match=r"top_p must be in \(0, 1\]"):
        SamplingParams(top_p=top_p)


@pytest.mark.parametrize("top_k", [2.0, "5", True, None])
def test_top_k_must_be_an_integer(top_k):
    with pytest.raises(SplitspecError, match="top_k must be an integer"):
        SamplingParams(top_k=top_k)


@pytest.mark.parametrize("max_tokens", [0, -3, 1.5, "16"])
def test_max_tokens_must_be_a_positive_integer(max_tokens):
    with pytest.raises(SplitspecError, match="max_tokens must be a positive integer"):
        SamplingParams(max_tokens=max_tokens)


@pytest.mark.parametrize("stop", ["", [""], ["ok", 5], 5])
def test_stop_must_be_non_empty_strings(stop):
    with pytest.raises(SplitspecError, match="stop must be a non-empty string"):
        SamplingParams(stop=stop)


@pytest.mark.parametrize("stop_token_ids", [[-1], [2.0], ["2"], 2])
def test_stop_token_ids_must_be_a_list_of_non_negative_integers(stop_token_ids):
    with pytest.raises(SplitspecError, match="stop_token_ids must be non-negative integers"):
        SamplingParams(stop_token_ids=stop_token_ids)


def test_accepted_boundary_values():
    params = SamplingParams(temperature=0, top_p=1.0, top_k=-1, max_tokens=1)
    assert (params.temperature, params.top_p, params.top_k, params.max_tokens) == (0, 1.0, -1, 1)
    assert SamplingParams(max_tokens=None).max_tokens is None


def test_a_single_stop_string_becomes_a_list():
    assert SamplingParams(stop="x").stop_strings == ["x"]


def test_stop_strings_and_stop_token_ids_default_to_empty_lists():
    params = SamplingParams()
    assert params.stop_strings == []
    assert params.stop_token_ids == []


def test_stop_token_ids_tuple_becomes_a_list():
    assert SamplingParams(stop_token_ids=(3, 4)).stop_token_ids == [3, 4]


@pytest.mark.parametrize("temperature, greedy", [(0, True), (0.0, True), (1e-6, False), (1.0, False)])
def test_greedy_exactly_when_temperature_is_zero(temperature, greedy):
    assert SamplingParams(temperature=temperature).greedy is greedy


def test_truncate_prompt_tokens_keeps_the_prompt_s_end(tiny_llama) -> None:
    with pytest.raises(SplitspecError, match="truncate_prompt_tokens"):
        SamplingParams(truncate_prompt_tokens=0)
    llm = LLM(str(tiny_llama), max_model_len=64)
    long_prompt = list(range(3, 203))  # longer than the context: refused unless truncated
    with pytest.raises(SplitspecError, match="shorten the prompt"):
        llm.generate([{"prompt_token_ids": long_prompt}], SamplingParams(max_tokens=4), use_tqdm=False)
    truncated = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, truncate_prompt_tokens=20)
    cut = llm.generate([{"prompt_token_ids": long_prompt}], truncated, use_tqdm=False)[0]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    tail = llm.generate([{"prompt_token_ids": long_prompt[-20:]}], params, use_tqdm=False)[0]
    assert cut.prompt_token_ids == long_prompt[-20:]
    assert cut.outputs[0].token_ids == tail.outputs[0].token_ids
