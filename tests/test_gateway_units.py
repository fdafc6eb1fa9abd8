"""The gateway's request validation and streaming detokenizer, with a real byte-level BPE tokenizer.

The tokenizer is trained here on a few sentences, so characters it never saw (✓, 日, 本) are spelled
as single bytes and every multi-byte character is split across tokens, as real tokenizers do with
rare characters.
"""

from __future__ import annotations

import itertools
import math

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct
from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast

from gateway.detokenizer import IncrementalDetokenizer
from gateway.validation import validate
from protos import splitspec_v1_pb2 as pb
from splitspec.errors import ServiceError
from splitspec.sampling_params import SamplingParams
from splitspec.sequence import Sequence
from splitspec.stop_checker import StopChecker

CORPUS = ["hello world, hello there.", "the quick brown fox jumps over the lazy dog.", "héllo wörld", "here and there"]
TEXT = "héllo wörld ✓ 日本, hello there ✓✓ the lazy dög 日本語"
MAX_MODEL_LEN = 64
DEFAULT_K = 5
ROUND_SIZES = {"one at a time": [1], "pairs": [2], "uneven rounds": [3, 1, 4, 1, 5]}


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1, special_tokens=["<eos>"], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<eos>")


def decoder(tokenizer):
    return lambda token_ids: tokenizer.decode(token_ids, skip_special_tokens=True)


def stream(tokenizer, output_ids: list[int], stop: list[str], round_sizes: list[int]) -> list[str]:
    """The text deltas a client receives, produced the way gateway.generation drives the detokenizer."""
    decode = decoder(tokenizer)
    params = SamplingParams(stop=stop, max_tokens=len(output_ids), ignore_eos=True)
    seq = Sequence("seq", None, [0], params, seed=0)
    stop_checker = StopChecker(set(), MAX_MODEL_LEN * 100, decode)
    detokenizer = IncrementalDetokenizer(decode, params.stop_strings)
    deltas, at = [], 0
    for size in itertools.cycle(round_sizes):
        stop_checker.commit(seq, output_ids[at : at + size])
        at += size
        if seq.finished:
            final = seq.text if seq.stop_reason in params.stop_strings else decode(seq.output_token_ids)
            return deltas + [detokenizer.delta(seq.output_token_ids, final_text=final)]
        deltas.append(detokenizer.delta(seq.output_token_ids))
    raise AssertionError("unreachable")


def test_the_tokenizer_splits_multi_byte_characters_across_tokens(tokenizer):
    ids = tokenizer.encode(TEXT)
    decode = decoder(tokenizer)
    assert decode(ids) == TEXT
    assert any("\ufffd" in decode(ids[:n]) for n in range(1, len(ids)))


@pytest.mark.parametrize("round_sizes", ROUND_SIZES.values(), ids=ROUND_SIZES.keys())
def test_concatenated_deltas_equal_the_decoded_text(tokenizer, round_sizes):
    ids = tokenizer.encode(TEXT)
    assert "".join(stream(tokenizer, ids, [], round_sizes)) == TEXT


@pytest.mark.parametrize("round_sizes", ROUND_SIZES.values(), ids=ROUND_SIZES.keys())
def test_no_delta_carries_a_replacement_character(tokenizer, round_sizes):
    deltas = stream(tokenizer, tokenizer.encode(TEXT), [], round_sizes)
    assert not any("\ufffd" in d for d in deltas), deltas


@pytest.mark.parametrize("round_sizes", ROUND_SIZES.values(), ids=ROUND_SIZES.keys())
@pytest.mark.parametrize("stop", [["wörld"], ["✓ 日"], ["本"], ["there"], ["not in the text", "dög"], ["✓✓ the"]])
def test_a_stop_string_is_never_streamed_and_the_text_ends_before_it(tokenizer, round_sizes, stop):
    deltas = stream(tokenizer, tokenizer.encode(TEXT), stop, round_sizes)
    cut = min(TEXT.find(s) for s in stop if s in TEXT)
    assert "".join(deltas) == TEXT[:cut]
    for s in stop:
        assert not any(s in d for d in deltas), deltas
    assert not any("\ufffd" in d for d in deltas), deltas


def test_text_after_a_stop_string_in_the_same_round_is_dropped(tokenizer):
    ids = tokenizer.encode(TEXT)
    deltas = stream(tokenizer, ids, ["hello there"], [len(ids)])
    assert deltas == [TEXT[: TEXT.find("hello there")]]


# ---------------------------------------------------------------- validation


def request(prompt="hello world", prompt_token_ids=(), speculation=None, **sampling) -> pb.GenerateRequest:
    msg = pb.GenerateRequest(
        prompt=prompt, prompt_token_ids=list(prompt_token_ids), sampling=pb.SamplingParameters(**sampling)
    )
    if speculation is not None:
        msg.speculation.CopyFrom(_struct(speculation))
    return msg


def _struct(values: dict) -> Struct:
    struct = Struct()
    struct.update(values)
    return struct


def run_validate(tokenizer, msg: pb.GenerateRequest):
    return validate(msg, tokenizer, len(tokenizer), MAX_MODEL_LEN, DEFAULT_K)


INVALID = {
    "both prompt forms": (dict(prompt="hi", prompt_token_ids=[1, 2]), "prompt_token_ids"),
    "empty prompt": (dict(prompt=""), "prompt"),
    "NaN temperature": (dict(temperature=math.nan), "temperature"),
    "negative temperature": (dict(temperature=-0.5), "temperature"),
    "top_p 0": (dict(top_p=0.0), "top_p"),
    "top_p 1.5": (dict(top_p=1.5), "top_p"),
    "NaN top_p": (dict(top_p=math.nan), "top_p"),
    "max_tokens 0": (dict(max_tokens=0), "max_tokens"),
    "unknown speculation key": (dict(speculation={"method": "ngram"}), "method"),
    "fractional num_speculative_tokens": (dict(speculation={"num_speculative_tokens": 2.5}), "num_speculative_tokens"),
    "string num_speculative_tokens": (dict(speculation={"num_speculative_tokens": "3"}), "num_speculative_tokens"),
    "boolean num_speculative_tokens": (dict(speculation={"num_speculative_tokens": True}), "num_speculative_tokens"),
    "negative num_speculative_tokens": (dict(speculation={"num_speculative_tokens": -1}), "num_speculative_tokens"),
    "NaN num_speculative_tokens": (dict(speculation={"num_speculative_tokens": math.nan}), "num_speculative_tokens"),
    "infinite num_speculative_tokens": (
        dict(speculation={"num_speculative_tokens": math.inf}),
        "num_speculative_tokens",
    ),
    "prompt ids as long as the context": (dict(prompt="", prompt_token_ids=[7] * MAX_MODEL_LEN), "prompt"),
    "text prompt longer than the context": (dict(prompt="hello " * MAX_MODEL_LEN), "prompt"),
    "token id past the vocabulary": (dict(prompt="", prompt_token_ids=[1, 300]), "prompt_token_ids"),
    "negative token id": (dict(prompt="", prompt_token_ids=[-1]), "prompt_token_ids"),
}


@pytest.mark.parametrize("fields, named", INVALID.values(), ids=INVALID.keys())
def test_invalid_requests_are_refused_naming_the_field(tokenizer, fields, named):
    with pytest.raises(ServiceError) as info:
        run_validate(tokenizer, request(**fields))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert named in info.value.message


def test_a_text_prompt_without_a_tokenizer_asks_for_token_ids(tokenizer):
    with pytest.raises(ServiceError) as info:
        validate(request(), None, len(tokenizer), MAX_MODEL_LEN, DEFAULT_K)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "prompt_token_ids" in info.value.message


def test_unset_fields_take_the_documented_defaults(tokenizer):
    valid = run_validate(tokenizer, request())
    assert valid.prompt == "hello world"
    assert valid.prompt_token_ids == tokenizer.encode("hello world")
    params = valid.params
    assert (params.temperature, params.top_p, params.top_k, params.max_tokens, params.seed) == (1.0, 1.0, -1, 16, None)
    assert params.stop_strings == [] and params.stop_token_ids == []
    assert valid.num_speculative_tokens == DEFAULT_K


def test_explicit_zero_temperature_is_greedy_not_the_default(tokenizer):
    assert run_validate(tokenizer, request(temperature=0.0)).params.greedy


def test_token_id_prompt_is_taken_as_is(tokenizer):
    valid = run_validate(tokenizer, request(prompt="", prompt_token_ids=[0, 5, len(tokenizer) - 1]))
    assert valid.prompt is None
    assert valid.prompt_token_ids == [0, 5, len(tokenizer) - 1]


def test_speculation_override_sets_k_and_zero_disables_speculation(tokenizer):
    assert run_validate(tokenizer, request(speculation={"num_speculative_tokens": 3})).num_speculative_tokens == 3
    assert run_validate(tokenizer, request(speculation={"num_speculative_tokens": 0})).num_speculative_tokens == 0
