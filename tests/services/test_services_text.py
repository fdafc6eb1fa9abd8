"""Text through the three services: chat prompts, multi-byte answers, stop strings and EOS, streamed by the
gateway exactly as the in-process `LLM` writes them.

The default model (SmolLM2-135M-Instruct) runs as verifier, ngram proposer and gateway processes. Both
sides draft a fixed K, so the rounds, and with them every verify pass, are the same in and out of process.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
from dataclasses import dataclass

import grpc
import pytest
from service_stack import TEXT_STACK_K, TEXT_STACK_KV_BYTES

from splitspec import LLM, SamplingParams
from splitspec.entrypoints.client import build_request
from splitspec.rpc import wire
from splitspec.structured_outputs import StructuredOutputsParams
from splitspec_protos import splitspec_v1_pb2 as pb
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.default_model]

K = TEXT_STACK_K
SMALL_KV = TEXT_STACK_KV_BYTES
ESSAY = "Write a short paragraph about the history of tea."
JAPANESE = "Translate into Japanese: Good morning, my friend. How are you today?"
ONE_WORD = "What is the capital of France? Answer with one word."
MAX_TOKENS = {
    ESSAY: 48,
    JAPANESE: 25,
    ONE_WORD: 64,
}  # each kana of the Japanese answer is two tokens: 25 ends on a whole one
TIMEOUT_S = 300


@dataclass
class Streamed:
    token_ids: list[int]
    deltas: list[str]
    finish_reason: str
    stop_reason: str

    @property
    def text(self) -> str:
        return "".join(self.deltas)


def stream(address: str, prompt: str | list[dict], params: SamplingParams) -> Streamed:
    request = build_request(
        prompt,
        temperature=0,
        max_tokens=params.max_tokens,
        stop=params.stop_strings,
        ignore_eos=params.ignore_eos,
        include_stop_str_in_output=params.include_stop_str_in_output,
    )
    with grpc.insecure_channel(address) as channel:
        responses = list(pb_grpc.GatewayStub(channel).Generate(request, timeout=TIMEOUT_S))
    last: pb.GenerateResponse = responses[-1]
    return Streamed(
        [t for r in responses for t in r.token_ids], [r.text for r in responses], last.finish_reason, last.stop_reason
    )


def greedy(prompt: str, **kwargs) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=MAX_TOKENS[prompt], **kwargs)


@pytest.fixture(scope="module")
def gateway(default_model_stack) -> str:
    return default_model_stack.gateway.address


@pytest.fixture(scope="module")
def plain(default_model_path) -> LLM:
    return LLM(str(default_model_path), kv_cache_memory_bytes=SMALL_KV)


@pytest.fixture(scope="module")
def ngram(default_model_path) -> LLM:
    spec = {"method": "ngram", "num_speculative_tokens": K, "adaptive": False}
    return LLM(str(default_model_path), speculative_config=spec, kv_cache_memory_bytes=SMALL_KV)


@pytest.fixture(scope="module")
def prompts(plain) -> dict[str, str]:
    return {q: plain.apply_chat_template([{"role": "user", "content": q}]) for q in MAX_TOKENS}


@pytest.fixture(scope="module")
def in_process(plain, ngram, prompts):
    """Each question's completion from plain decoding and from in-process ngram speculation."""
    questions = list(MAX_TOKENS)
    params = [greedy(q) for q in questions]
    chats = [prompts[q] for q in questions]
    plain_out = plain.generate(chats, params, use_tqdm=False)
    ngram_out = ngram.generate(chats, params, use_tqdm=False)
    return {q: (p.outputs[0], n.outputs[0]) for q, p, n in zip(questions, plain_out, ngram_out)}


def test_a_chat_prompt_streams_the_tokens_and_text_of_in_process_and_plain_decoding(gateway, prompts, in_process):
    plain_completion, ngram_completion = in_process[ESSAY]
    got = stream(gateway, prompts[ESSAY], greedy(ESSAY))
    assert got.token_ids == ngram_completion.token_ids == plain_completion.token_ids
    assert got.text == ngram_completion.text == plain_completion.text
    assert got.finish_reason == ngram_completion.finish_reason


def test_multi_byte_characters_stream_whole(gateway, plain, prompts, in_process):
    _, expected = in_process[JAPANESE]
    decode = plain.get_tokenizer().decode
    split = [n for n in range(1, len(expected.token_ids)) if decode(expected.token_ids[:n]).endswith("\ufffd")]
    assert any(ord(c) > 0x2FFF for c in expected.text), expected.text  # CJK, kana or emoji, not just accents
    assert split, "no character of the answer is split across tokens: the test would prove nothing"
    got = stream(gateway, prompts[JAPANESE], greedy(JAPANESE))
    assert got.token_ids == expected.token_ids
    assert got.text == expected.text
    assert not any("\ufffd" in d for d in got.deltas), got.deltas


def test_a_stop_string_cuts_the_streamed_text_where_in_process_does(gateway, ngram, prompts, in_process):
    plain_completion, _ = in_process[ESSAY]
    text = plain_completion.text
    stop = text[len(text) // 2 : len(text) // 2 + 12]  # a dozen characters from the middle: several tokens
    params = greedy(ESSAY, stop=[stop])
    expected = ngram.generate(prompts[ESSAY], params, use_tqdm=False)[0].outputs[0]
    got = stream(gateway, prompts[ESSAY], params)
    assert (got.finish_reason, got.stop_reason) == ("stop", stop)
    assert (expected.finish_reason, expected.stop_reason) == ("stop", stop)
    assert got.text == expected.text == text[: text.find(stop)]
    assert got.token_ids == expected.token_ids
    assert not any(stop in d for d in got.deltas)
    kept = greedy(ESSAY, stop=[stop], include_stop_str_in_output=True)
    assert stream(gateway, prompts[ESSAY], kept).text == text[: text.find(stop) + len(stop)]


def test_eos_ends_a_short_answer_before_max_tokens(gateway, ngram, prompts, in_process):
    plain_completion, expected = in_process[ONE_WORD]
    eos = ngram.engine.stop_checker.eos_token_ids
    assert expected.finish_reason == "stop" and expected.token_ids[-1] in eos
    assert len(expected.token_ids) < MAX_TOKENS[ONE_WORD]
    got = stream(gateway, prompts[ONE_WORD], greedy(ONE_WORD))
    assert (got.finish_reason, got.stop_reason) == ("stop", "")
    assert got.token_ids == expected.token_ids == plain_completion.token_ids
    assert got.text == expected.text and "Paris" in got.text


CONVERSATION = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": ONE_WORD},
]


def test_chat_messages_through_generate_give_llm_chat_output(gateway, plain):
    """GenerateRequest.messages: the gateway applies the chat template as LLM.chat does in-process."""
    expected = plain.chat(CONVERSATION, greedy(ONE_WORD), use_tqdm=False)[0].outputs[0]
    got = stream(gateway, CONVERSATION, greedy(ONE_WORD))
    assert got.token_ids == expected.token_ids and got.text == expected.text
    assert "Paris" in got.text


@pytest.mark.parametrize(
    "request_kwargs, message",
    [
        (dict(prompt="hello", messages=[pb.ChatMessage(role="user", content="hi")]), "not prompt and messages"),
        (dict(messages=[pb.ChatMessage(role="", content="hi")]), "messages[0].role is empty"),
        (dict(messages=[pb.ChatMessage(role="user", content="a"), pb.ChatMessage(content="b")]), "messages[1].role"),
    ],
)
def test_bad_chat_messages_are_refused_with_the_field_named(gateway, request_kwargs, message):
    with grpc.insecure_channel(gateway) as channel, pytest.raises(grpc.RpcError) as err:
        list(pb_grpc.GatewayStub(channel).Generate(pb.GenerateRequest(**request_kwargs), timeout=TIMEOUT_S))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()


def test_generate_command_through_the_gateway_sends_a_chat_turn(gateway, plain, in_process):
    """`splitspec generate --gateway` puts the prompt in a user message, as the in-process command does."""
    _, expected = in_process[ONE_WORD]
    done = subprocess.run(
        [sys.executable, "-m", "splitspec", "generate", "--gateway", gateway, "--max-tokens", str(MAX_TOKENS[ONE_WORD]),
         ONE_WORD],
        capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected.text + "\n"


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
ASK_FOR_JSON = [{"role": "user", "content": "Describe a famous scientist as JSON with a name and an age."}]


def _constrained(structured: StructuredOutputsParams, max_tokens: int = 40) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, structured_outputs=structured)


@pytest.mark.parametrize(
    "structured",
    [StructuredOutputsParams(json=PERSON), StructuredOutputsParams(choice=["Newton", "Curie", "Einstein"])],
    ids=["json", "choice"],
)
def test_structured_outputs_through_the_gateway_are_in_process_output(gateway, plain, structured):
    """The gateway sends the grammar with the sequence; the verifier masks every row and cuts the n-gram
    drafts it forbids."""
    expected = plain.chat(ASK_FOR_JSON, _constrained(structured), use_tqdm=False)[0].outputs[0]
    request = build_request(ASK_FOR_JSON, temperature=0, max_tokens=40, structured_outputs=structured)
    with grpc.insecure_channel(gateway) as channel:
        responses = list(pb_grpc.GatewayStub(channel).Generate(request, timeout=TIMEOUT_S))
    assert [t for r in responses for t in r.token_ids] == expected.token_ids
    assert "".join(r.text for r in responses) == expected.text
    assert responses[-1].finish_reason == expected.finish_reason == "stop"  # the grammar ended it
    if structured.json is not None:
        assert set(json.loads(expected.text)) == {"name", "age"}
    else:
        assert expected.text in structured.choice


def test_min_p_logit_bias_and_shown_special_tokens_through_the_gateway_are_in_process_output(gateway, plain):
    """min_p and logit_bias reach the verifier's rows; skip_special_tokens the gateway's text."""
    im_end = plain.tokenizer.convert_tokens_to_ids("<|im_end|>")
    bias = {im_end: -100.0, plain.tokenizer.encode(" Paris")[0]: -5.0}
    shaping = dict(min_p=0.2, logit_bias=bias, skip_special_tokens=False)
    params = SamplingParams(temperature=1.2, seed=11, max_tokens=12, **shaping)
    expected = plain.generate(ONE_WORD, params, use_tqdm=False)[0].outputs[0]
    unshaped = plain.generate(ONE_WORD, SamplingParams(temperature=1.2, seed=11, max_tokens=12), use_tqdm=False)
    assert expected.token_ids != unshaped[0].outputs[0].token_ids and im_end not in expected.token_ids
    request = build_request(ONE_WORD, temperature=1.2, seed=11, max_tokens=12, **shaping)
    with grpc.insecure_channel(gateway) as channel:
        responses = list(pb_grpc.GatewayStub(channel).Generate(request, timeout=TIMEOUT_S))
    assert [t for r in responses for t in r.token_ids] == expected.token_ids
    assert "".join(r.text for r in responses) == expected.text


def test_a_grammar_that_does_not_compile_is_invalid_argument_with_xgrammar_s_reason(gateway):
    request = build_request(ONE_WORD, max_tokens=4, structured_outputs=StructuredOutputsParams(regex="(ab"))
    with grpc.insecure_channel(gateway) as channel, pytest.raises(grpc.RpcError) as caught:
        list(pb_grpc.GatewayStub(channel).Generate(request, timeout=TIMEOUT_S))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "structured_outputs.regex: Regex parsing error" in caught.value.details()


def test_a_sequence_resent_with_part_of_its_output_goes_on_under_its_grammar(default_model_stack, plain):
    """What a failover sends a verifier: the prompt and the output so far, with prompt_len. The verifier
    moves the grammar through that output first, and continues as the sequence would have."""
    structured = StructuredOutputsParams(json=PERSON)
    expected = plain.chat(ASK_FOR_JSON, _constrained(structured), use_tqdm=False)[0]
    prompt, output = list(expected.prompt_token_ids), list(expected.outputs[0].token_ids)
    tokens = prompt + output[:6]  # inside the JSON object: the grammar's start would refuse what follows
    requests: queue.Queue = queue.Queue()
    start = pb.VerifierRequest(call_id=1, seq_id="resumed")
    start.start.token_ids.extend(tokens)
    start.start.prompt_len = len(prompt)
    start.start.structured_outputs.CopyFrom(wire.structured_outputs_to_proto(structured))
    requests.put(start)
    with grpc.insecure_channel(default_model_stack.verifier.address) as channel:
        responses = pb_grpc.VerifierStub(channel).Verify(iter(requests.get, None), timeout=TIMEOUT_S)
        assert next(responses).WhichOneof("kind") == "ack"
        while len(tokens) < len(prompt) + len(output):
            step = pb.VerifierRequest(call_id=len(tokens), seq_id="resumed")
            step.step.committed_len = len(tokens)
            requests.put(step)
            response = next(responses)
            assert response.WhichOneof("kind") == "result", response.error.message
            tokens += list(response.result.token_ids)
        requests.put(None)
    assert tokens == prompt + output
