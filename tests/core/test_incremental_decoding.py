"""Output text decoded a few tokens at a time is exactly the whole output decoded, at a flat cost per token.

With the default model's real byte-level tokenizer: Japanese, Korean and emoji are spelled with
several tokens each, so partial decodes end in U+FFFD; its special tokens decode to nothing.
"""

from __future__ import annotations

import pytest
from decoding_reference import (
    MULTI_BYTE_TEXT,
    CountingTokenizer,
    decode_cost_per_token,
    in_rounds,
    long_output,
    stop_by_full_decoding,
    token_pool,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitspec.incremental_decoder import IncrementalDecoder
from splitspec.sampling_params import SamplingParams
from splitspec.sequence import Sequence
from splitspec.stop_checker import StopChecker
from splitspec.tokenizer import load_tokenizer

pytestmark = pytest.mark.default_model

LONG_OUTPUT_TOKENS = 4000
EDGE_TOKENS = 200  # the stretch at each end of the long output whose cost is compared
ROUND_SIZES = [1, 3, 6, 2, 5]  # what speculative rounds commit: accepted drafts plus one
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NEVER = "\x00not in any output"


@pytest.fixture(scope="module")
def tokenizer(default_model_path):
    return load_tokenizer(default_model_path)


@pytest.fixture(scope="module")
def pool(tokenizer) -> list[int]:
    return token_pool(tokenizer)


def user_decode(tokenizer):
    return lambda token_ids: tokenizer.decode(token_ids, skip_special_tokens=True)


def sequence(max_tokens: int, stop: list[str], include_stop_str_in_output: bool = False) -> Sequence:
    params = SamplingParams(
        max_tokens=max_tokens, stop=stop, include_stop_str_in_output=include_stop_str_in_output, ignore_eos=True
    )
    return Sequence("seq", None, [1, 2, 3], params, seed=0)


def test_the_tokenizer_splits_multi_byte_characters_across_tokens(tokenizer):
    ids = tokenizer.encode(MULTI_BYTE_TEXT)
    decode = user_decode(tokenizer)
    assert decode(ids) == MULTI_BYTE_TEXT
    assert any(decode(ids[:n]).endswith("\ufffd") for n in range(1, len(ids)))


@PROPERTY_SETTINGS
@given(data=st.data())
def test_released_and_pending_text_is_the_whole_output_decoded_after_every_round(tokenizer, pool, data):
    output = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=48), label="output")
    round_sizes = data.draw(st.lists(st.integers(1, 8), min_size=1, max_size=5), label="round sizes")
    decode = user_decode(tokenizer)
    prompt = [7, 8]
    decoder = IncrementalDecoder(decode, len(prompt))
    tokens = list(prompt)
    for round_tokens in in_rounds(output, round_sizes):
        tokens += round_tokens
        decoder.catch_up(tokens)
        whole = decode(tokens[len(prompt) :])
        assert decoder.text == whole
        assert decoder.text_from(decoder.length // 2) == whole[decoder.length // 2 :]


@PROPERTY_SETTINGS
@given(data=st.data())
def test_stop_strings_stop_where_decoding_the_whole_output_after_every_token_does(tokenizer, pool, data):
    decode = user_decode(tokenizer)
    output = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=48), label="output")
    text = decode(output)
    stops = [NEVER]
    for _ in range(data.draw(st.integers(1, 3), label="stop strings from the text") if text else 0):
        start = data.draw(st.integers(0, len(text) - 1))
        stops.append(text[start : start + data.draw(st.integers(1, 20))])
    stops = list(dict.fromkeys(data.draw(st.permutations(stops), label="stop strings")))
    include = data.draw(st.booleans(), label="include_stop_str_in_output")
    round_sizes = data.draw(st.lists(st.integers(1, 8), min_size=1, max_size=5), label="round sizes")

    checker = StopChecker(set(), 1 << 20, lambda ids, params: decode(ids))
    seq = sequence(len(output), stops, include)
    for round_tokens in in_rounds(output, round_sizes):
        checker.commit(seq, round_tokens)
        if seq.finished:
            break
    kept, stop, expected_text = stop_by_full_decoding(decode, output, stops, include)
    assert seq.output_token_ids == output[:kept]
    assert seq.stop_reason == stop
    assert checker.output_text(seq) == expected_text


def test_checking_stop_strings_decodes_as_few_tokens_per_token_at_4000_tokens_as_at_the_start(tokenizer):
    output = long_output(tokenizer, LONG_OUTPUT_TOKENS)
    counting = CountingTokenizer(tokenizer)
    checker = StopChecker(set(), 1 << 20, lambda ids, params: user_decode(counting)(ids))
    seq = sequence(len(output), ["日本語のテキスト!", NEVER])  # both long, neither in the text
    round_costs = []
    for round_tokens in in_rounds(output, ROUND_SIZES):
        before = counting.num_decoded
        checker.commit(seq, round_tokens)
        round_costs.append((len(round_tokens), counting.num_decoded - before))
    assert seq.output_token_ids == output and seq.stop_reason is None
    per_token = decode_cost_per_token(round_costs)
    first, last = sum(per_token[:EDGE_TOKENS]), sum(per_token[-EDGE_TOKENS:])
    assert last <= 2 * first, (first, last)
    assert last <= 10 * EDGE_TOKENS, last


def test_a_run_of_special_tokens_costs_no_more_per_token_than_text(tokenizer):
    """An ignore_eos request that keeps emitting EOS: tokens that add no text leave the decoding window."""
    text_ids = tokenizer.encode(MULTI_BYTE_TEXT)
    output = text_ids + [tokenizer.eos_token_id] * 2000 + text_ids
    counting = CountingTokenizer(tokenizer)
    decoder = IncrementalDecoder(user_decode(counting))
    for n in range(1, len(output) + 1):
        decoder.catch_up(output[:n])
    assert decoder.text == MULTI_BYTE_TEXT * 2
    assert counting.num_decoded <= 10 * len(output)
