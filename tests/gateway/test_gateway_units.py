"""The gateway's request validation and streaming text, with real tokenizers.

The streaming tests drive GatewayCore.generate, the gateway's own per-request loop, against a verifier
that replays a fixed output in rounds of given sizes. A byte-level BPE tokenizer is trained here on a
few sentences, so characters it never saw (✓, 日, 本) are spelled as single bytes and every
multi-byte character is split across tokens, as real tokenizers do with rare characters; the tests
marked default_model use the default model's real tokenizer.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

import grpc
import pytest
from decoding_reference import (
    CountingTokenizer,
    decode_cost_per_token,
    in_rounds,
    long_output,
    stop_by_full_decoding,
    token_pool,
)
from google.protobuf.struct_pb2 import Struct
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast
from verifier_stand_in import VerifierStandIn

from gateway_svc.generation import Delta, GatewayCore
from gateway_svc.validation import RequestLimits, validate
from splitspec.errors import ServiceError
from splitspec.sampling_params import SamplingParams
from splitspec.tokenizer import load_tokenizer
from splitspec_protos import splitspec_v1_pb2 as pb

CORPUS = ["hello world, hello there.", "the quick brown fox jumps over the lazy dog.", "héllo wörld", "here and there"]
TEXT = "héllo wörld ✓ 日本, hello there ✓✓ the lazy dög 日本語"
MAX_MODEL_LEN = 64
DEFAULT_K = 5
ROUND_SIZES = {"one at a time": [1], "pairs": [2], "uneven rounds": [3, 1, 4, 1, 5]}
PROMPT = [1, 2, 3]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1, special_tokens=["<eos>"], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<eos>")


@pytest.fixture(scope="module")
def default_tokenizer(default_model_path):
    return load_tokenizer(default_model_path)


def decoder(tokenizer):
    return lambda token_ids: tokenizer.decode(token_ids, skip_special_tokens=True)


@dataclass
class ReplayingVerifier(VerifierStandIn):
    """Answers each step with the next round of a fixed output, as a verifier accepting drafts would."""

    rounds: list[list[int]] = field(default_factory=list)
    length: int = 0

    async def start(self, seq_id: str, token_ids: list[int], *args) -> None:
        self.length = len(token_ids)

    async def step(
        self, seq_id: str, committed_len: int, draft, local=None, pipelined=False, remote=None, every_draft=False
    ) -> pb.StepResult:
        built_on, tokens = self.length, self.rounds.pop(0)
        self.length += len(tokens)
        return pb.StepResult(committed_len=built_on, token_ids=tokens)


def stream(tokenizer, output_ids: list[int], stop: list[str], round_sizes: list[int], **sampling) -> list[Delta]:
    """What GatewayCore.generate yields while the verifier commits `output_ids` in rounds of `round_sizes`."""
    sampling = {"max_tokens": len(output_ids), "ignore_eos": True} | sampling
    params = SamplingParams(temperature=0, stop=stop, **sampling)
    core = GatewayCore(
        [ReplayingVerifier(rounds=in_rounds(output_ids, round_sizes))],
        [],
        tokenizer,
        {tokenizer.eos_token_id},
        max_model_len=1 << 20,
    )

    async def collect() -> list[Delta]:
        return [delta async for delta in core.generate(None, PROMPT, params, 0)]

    return asyncio.run(collect())


def texts(deltas: list[Delta]) -> list[str]:
    return [d.text for d in deltas]


def test_the_tokenizer_splits_multi_byte_characters_across_tokens(tokenizer):
    ids = tokenizer.encode(TEXT)
    decode = decoder(tokenizer)
    assert decode(ids) == TEXT
    assert any("\ufffd" in decode(ids[:n]) for n in range(1, len(ids)))


@pytest.mark.parametrize("round_sizes", ROUND_SIZES.values(), ids=ROUND_SIZES.keys())
def test_concatenated_deltas_equal_the_decoded_text(tokenizer, round_sizes):
    ids = tokenizer.encode(TEXT)
    deltas = stream(tokenizer, ids, [], round_sizes)
    assert "".join(texts(deltas)) == TEXT
    assert [t for d in deltas for t in d.token_ids] == ids
    assert deltas[-1].finish_reason == "length"


@pytest.mark.parametrize("round_sizes", ROUND_SIZES.values(), ids=ROUND_SIZES.keys())
def test_no_delta_carries_a_replacement_character(tokenizer, round_sizes):
    deltas = texts(stream(tokenizer, tokenizer.encode(TEXT), [], round_sizes))
    assert not any("\ufffd" in d for d in deltas), deltas


@pytest.mark.parametrize("round_sizes", ROUND_SIZES.values(), ids=ROUND_SIZES.keys())
@pytest.mark.parametrize("stop", [["wörld"], ["✓ 日"], ["本"], ["there"], ["not in the text", "dög"], ["✓✓ the"]])
def test_a_stop_string_is_never_streamed_and_the_text_ends_before_it(tokenizer, round_sizes, stop):
    deltas = stream(tokenizer, tokenizer.encode(TEXT), stop, round_sizes)
    cut = min(TEXT.find(s) for s in stop if s in TEXT)
    assert "".join(texts(deltas)) == TEXT[:cut]
    for s in stop:
        assert not any(s in d for d in texts(deltas)), deltas
    assert not any("\ufffd" in d for d in texts(deltas)), deltas
    assert (deltas[-1].finish_reason, deltas[-1].stop_reason) == ("stop", next(s for s in stop if s in TEXT))


def test_text_that_could_start_a_stop_string_is_held_back_until_it_cannot(tokenizer):
    ids = tokenizer.encode(TEXT)
    stop = "the lazy cat"  # "the lazy " occurs, the whole never does
    deltas = stream(tokenizer, ids, [stop], [1])
    decode = decoder(tokenizer)
    streamed = ""
    for n, delta in enumerate(deltas[:-1], start=1):
        streamed += delta.text
        decoded = decode(ids[:n]).rstrip("\ufffd")
        assert len(streamed) == max(0, len(decoded) - (len(stop) - 1)), (streamed, decoded)
    assert streamed + deltas[-1].text == TEXT


def test_text_after_a_stop_string_in_the_same_round_is_dropped(tokenizer):
    ids = tokenizer.encode(TEXT)
    deltas = stream(tokenizer, ids, ["hello there"], [len(ids)])
    assert texts(deltas) == [TEXT[: TEXT.find("hello there")]]


def test_include_stop_str_in_output_streams_the_stop_string_last(tokenizer):
    deltas = stream(tokenizer, tokenizer.encode(TEXT), ["✓✓"], [2], include_stop_str_in_output=True)
    assert "".join(texts(deltas)) == TEXT[: TEXT.find("✓✓") + 2]
    assert deltas[-1].text.endswith("✓✓")


def test_eos_ends_the_stream_at_that_token_and_adds_no_text(tokenizer):
    ids = tokenizer.encode(TEXT)
    output = ids + [tokenizer.eos_token_id] + tokenizer.encode(" more")
    deltas = stream(tokenizer, output, [], [3], ignore_eos=False)
    assert [t for d in deltas for t in d.token_ids] == ids + [tokenizer.eos_token_id]
    assert "".join(texts(deltas)) == TEXT
    assert (deltas[-1].finish_reason, deltas[-1].stop_reason) == ("stop", None)
    assert deltas[-1].completion_tokens == len(ids) + 1


@pytest.mark.default_model
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_streamed_text_is_what_decoding_the_whole_output_after_every_token_gives(default_tokenizer, data):
    decode = decoder(default_tokenizer)
    output = data.draw(st.lists(st.sampled_from(token_pool(default_tokenizer)), min_size=1, max_size=40))
    text = decode(output)
    stops = [text[i : i + n] for i, n in data.draw(st.lists(st.tuples(st.integers(0, 80), st.integers(1, 12))))]
    stops = [s for s in dict.fromkeys(stops) if s]
    include = data.draw(st.booleans(), label="include_stop_str_in_output")
    round_sizes = data.draw(st.lists(st.integers(1, 8), min_size=1, max_size=5), label="round sizes")

    deltas = stream(default_tokenizer, output, stops, round_sizes, include_stop_str_in_output=include)
    kept, stop, expected = stop_by_full_decoding(decode, output, stops, include)
    assert "".join(texts(deltas)) == expected
    assert [t for d in deltas for t in d.token_ids] == output[:kept]
    assert deltas[-1].stop_reason == stop
    if "\ufffd" not in text:
        assert not any("\ufffd" in d for d in texts(deltas)), deltas


@pytest.mark.default_model
def test_streaming_decodes_as_few_tokens_per_token_at_4000_tokens_as_at_the_start(default_tokenizer):
    """Counted for every round but the last, whose text is the whole output decoded once."""
    output = long_output(default_tokenizer, 4000)
    counting = CountingTokenizer(default_tokenizer)
    params = SamplingParams(temperature=0, max_tokens=len(output), stop=["日本語のテキスト!"], ignore_eos=True)
    core = GatewayCore([ReplayingVerifier(rounds=in_rounds(output, [1, 3, 6, 2, 5]))], [], counting, set(), 1 << 20)

    async def round_costs() -> list[tuple[int, int]]:
        costs, before = [], 0
        async for delta in core.generate(None, PROMPT, params, 0):
            if delta.finish_reason is None:
                costs.append((len(delta.token_ids), counting.num_decoded - before))
            before = counting.num_decoded
        return costs

    per_token = decode_cost_per_token(asyncio.run(round_costs()))
    first, last = sum(per_token[:200]), sum(per_token[-200:])
    assert last <= 2 * first, (first, last)
    assert last <= 10 * 200, last


# ---------------------------------------------------------------- validation


def request(
    prompt="hello world", prompt_token_ids=(), speculation=None, session_id="", **sampling
) -> pb.GenerateRequest:
    msg = pb.GenerateRequest(
        prompt=prompt,
        prompt_token_ids=list(prompt_token_ids),
        sampling=pb.SamplingParameters(**sampling),
        session_id=session_id,
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
    "seventeen stop strings": (dict(stop=[f"s{i}" for i in range(17)]), "sampling.stop has 17"),
    "a stop string of 257 characters": (dict(stop=["ok", "x" * 257]), "sampling.stop[1]"),
    "sixty-five stop token ids": (dict(stop_token_ids=[1] * 65), "sampling.stop_token_ids has 65"),
    "stop token id past the vocabulary": (dict(stop_token_ids=[2, 300]), "sampling.stop_token_ids[1]"),
    "a session id of 257 characters": (dict(session_id="s" * 257), "session_id is 257 characters"),
}


@pytest.mark.parametrize("fields, named", INVALID.values(), ids=INVALID.keys())
def test_invalid_requests_are_refused_naming_the_field(tokenizer, fields, named):
    with pytest.raises(ServiceError) as info:
        run_validate(tokenizer, request(**fields))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert named in info.value.message


def test_max_tokens_above_the_server_limit_is_refused_and_at_it_taken(tokenizer):
    limits = RequestLimits(max_tokens=32)
    with pytest.raises(ServiceError) as info:
        validate(request(max_tokens=33), tokenizer, len(tokenizer), MAX_MODEL_LEN, DEFAULT_K, limits)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "sampling.max_tokens is 33; this server allows at most 32" in info.value.message
    assert validate(request(max_tokens=32), tokenizer, len(tokenizer), MAX_MODEL_LEN, DEFAULT_K, limits)
    assert run_validate(tokenizer, request(max_tokens=10_000)).params.max_tokens == 10_000  # no limit by default


def test_requests_at_every_limit_are_taken(tokenizer):
    limits = RequestLimits()
    fields = dict(
        stop=[f"{i:x}" * 4 for i in range(limits.max_stop_strings - 1)] + ["y" * limits.max_stop_string_chars],
        stop_token_ids=[len(tokenizer) - 1] * limits.max_stop_token_ids,
    )
    params = run_validate(tokenizer, request(**fields)).params
    assert len(params.stop_strings) == limits.max_stop_strings
    assert len(params.stop_token_ids) == limits.max_stop_token_ids


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
