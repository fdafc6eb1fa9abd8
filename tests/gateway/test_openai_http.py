"""The gateway's OpenAI-compatible HTTP API (issue 18), driven by the official `openai` package (sync
and async clients) against a real three-process stack with the default model."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import openai
import pytest
from e2e_requests import ended_requests
from service_stack import TEXT_STACK_MAX_TOKENS_LIMIT, TEXT_STACK_MODEL_NAME, wait_for

from splitspec import LLM, SamplingParams
from splitspec.structured_outputs import StructuredOutputsParams

pytestmark = [pytest.mark.e2e, pytest.mark.default_model]

MAX_TOKENS_LIMIT = TEXT_STACK_MAX_TOKENS_LIMIT
MODEL = TEXT_STACK_MODEL_NAME
CHAT = [{"role": "user", "content": "List the planets of the solar system in order."}]
PROMPT = "def fibonacci(n):\n    "


@pytest.fixture(scope="module")
def http_stack(default_model_stack):
    """The text stack shared with tests/services/test_services_text.py (fixed K=3, small KV cache)."""
    return default_model_stack


@pytest.fixture(scope="module")
def in_process(default_model_path) -> LLM:
    return LLM(str(default_model_path))


@pytest.fixture
def client(http_stack) -> openai.OpenAI:
    with openai.OpenAI(base_url=http_stack.http_base_url, api_key="unused", max_retries=0) as c:
        yield c


def _greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens)


def test_a_greedy_completion_is_in_process_output(client, in_process):
    answer = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0)
    expected = in_process.generate(PROMPT, _greedy(24), use_tqdm=False)[0].outputs[0]
    assert answer.object == "text_completion" and answer.model == MODEL
    assert [c.text for c in answer.choices] == [expected.text]
    assert answer.choices[0].finish_reason == "length"
    prompt_tokens = len(in_process.tokenizer.encode(PROMPT))
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (prompt_tokens, 24)
    assert answer.usage.total_tokens == prompt_tokens + 24
    assert answer.usage.model_extra["speculation"]["num_rounds"] >= 1
    with_ids = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, extra_body={"return_token_ids": True}
    )
    assert with_ids.choices[0].model_extra["token_ids"] == list(expected.token_ids)


def test_a_chat_is_in_process_chat_and_its_stream_adds_up_to_it(client, in_process):
    expected = in_process.chat(CHAT, _greedy(48), use_tqdm=False)[0].outputs[0]
    whole = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=48, temperature=0)
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == expected.text
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=CHAT, max_completion_tokens=48, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(expected.token_ids)
    assert (
        chunks[-1].usage.prompt_tokens
        == whole.usage.prompt_tokens
        == len(in_process.tokenizer.encode(in_process.apply_chat_template(CHAT)))
    )


def test_min_tokens_holds_off_the_end_as_in_process(client, in_process):
    messages = [{"role": "user", "content": "What is the capital of France? Answer with one word."}]
    short = in_process.chat(messages, _greedy(64), use_tqdm=False)[0].outputs[0]
    assert short.finish_reason == "stop" and len(short.token_ids) < 20  # the check below can fail
    params = SamplingParams(temperature=0, max_tokens=64, min_tokens=20)
    expected = in_process.chat(messages, params, use_tqdm=False)[0].outputs[0]
    answer = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=64, temperature=0, extra_body={"min_tokens": 20}
    )
    assert answer.choices[0].message.content == expected.text
    assert answer.usage.completion_tokens == len(expected.token_ids) >= 20


def test_penalties_are_in_process_penalties(client, in_process):
    """OpenAI's presence and frequency penalties and vLLM's repetition penalty, on both endpoints."""
    penalties = {"presence_penalty": 1.0, "frequency_penalty": 0.5}
    plain = in_process.generate(PROMPT, _greedy(32), use_tqdm=False)[0].outputs[0]
    params = SamplingParams(temperature=0, max_tokens=32, repetition_penalty=1.3, **penalties)
    expected = in_process.generate(PROMPT, params, use_tqdm=False)[0].outputs[0]
    assert expected.text != plain.text  # the check below can fail
    answer = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=32, temperature=0, extra_body={"repetition_penalty": 1.3}, **penalties
    )
    assert answer.choices[0].text == expected.text
    chat = in_process.chat(CHAT, SamplingParams(temperature=0, max_tokens=32, **penalties), use_tqdm=False)
    answer = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=32, temperature=0, **penalties)
    assert answer.choices[0].message.content == chat[0].outputs[0].text
    with pytest.raises(openai.BadRequestError, match="presence_penalty must be a number in"):
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, presence_penalty=2.5)


def test_logit_bias_min_p_and_special_tokens_are_in_process(client, in_process):
    """OpenAI's logit_bias, vLLM's min_p and skip_special_tokens, through the gateway to the verifier."""
    plain = in_process.generate(PROMPT, _greedy(24), use_tqdm=False)[0].outputs[0]
    bias = {plain.token_ids[3]: -100.0, plain.token_ids[8]: -100.0}
    params = SamplingParams(temperature=0, max_tokens=24, logit_bias=bias)
    expected = in_process.generate(PROMPT, params, use_tqdm=False)[0].outputs[0]
    assert expected.token_ids != plain.token_ids  # the check below can fail
    biased = {str(token): value for token, value in bias.items()}
    answer = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, logit_bias=biased)
    assert answer.choices[0].text == expected.text
    sampled = dict(temperature=1.3, max_tokens=24, seed=7)
    loose = in_process.generate(PROMPT, SamplingParams(**sampled), use_tqdm=False)[0].outputs[0]
    expected = in_process.generate(PROMPT, SamplingParams(min_p=0.3, **sampled), use_tqdm=False)[0].outputs[0]
    assert expected.token_ids != loose.token_ids  # the check below can fail
    answer = client.completions.create(model=MODEL, prompt=PROMPT, extra_body={"min_p": 0.3}, **sampled)
    assert answer.choices[0].text == expected.text

    im_start = in_process.tokenizer.convert_tokens_to_ids("<|im_start|>")
    forced = {"max_tokens": 3, "temperature": 0, "logit_bias": {str(im_start): 100}}
    assert client.completions.create(model=MODEL, prompt=PROMPT, **forced).choices[0].text == ""
    shown = client.completions.create(model=MODEL, prompt=PROMPT, extra_body={"skip_special_tokens": False}, **forced)
    assert shown.choices[0].text == "<|im_start|>" * 3
    params = SamplingParams(max_tokens=3, temperature=0, logit_bias={im_start: 100}, skip_special_tokens=False)
    assert in_process.generate(PROMPT, params, use_tqdm=False)[0].outputs[0].text == "<|im_start|>" * 3
    with pytest.raises(openai.BadRequestError, match="logit_bias token ids must be in"):
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, logit_bias={"99999999": 1})


def test_the_eos_that_ends_an_answer_is_text_only_with_include_stop_str_in_output(client, in_process):
    """With special tokens shown, the EOS that ended the answer stays out of its text, as vLLM's."""
    messages = [{"role": "user", "content": "What is the capital of France? Answer with one word."}]
    shown = SamplingParams(temperature=0, max_tokens=64, skip_special_tokens=False)
    expected = in_process.chat(messages, shown, use_tqdm=False)[0].outputs[0]
    hidden = in_process.chat(messages, _greedy(64), use_tqdm=False)[0].outputs[0]
    assert expected.finish_reason == "stop" and expected.text == hidden.text and "<|im_end|>" not in expected.text
    extra = {"skip_special_tokens": False, "include_stop_str_in_output": True}
    answer = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=64, temperature=0, extra_body=extra
    )
    assert answer.choices[0].message.content == expected.text + "<|im_end|>"


CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"],
}
ASK = [{"role": "user", "content": "Name one city and its country, as JSON."}]


def test_response_format_json_schema_and_json_object_are_in_process_structured_output(client, in_process):
    schema_format = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}}
    params = SamplingParams(temperature=0, max_tokens=48, structured_outputs=StructuredOutputsParams(json=CITY))
    expected = in_process.chat(ASK, params, use_tqdm=False)[0].outputs[0]
    answer = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=48, temperature=0, response_format=schema_format
    )
    assert answer.choices[0].message.content == expected.text
    assert answer.choices[0].finish_reason == "stop" and set(json.loads(expected.text)) == {"city", "country"}
    params = SamplingParams(temperature=0, max_tokens=48, structured_outputs=StructuredOutputsParams(json_object=True))
    expected = in_process.chat(ASK, params, use_tqdm=False)[0].outputs[0]
    chunks = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=48, temperature=0, response_format={"type": "json_object"}, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
    assert expected.text.lstrip().startswith("{")


@pytest.mark.slow
def test_fifty_sampled_json_answers_all_match_the_schema_with_and_without_speculation(client):
    """The issue's bar: valid JSON on every try, sampled, 25 choices each way (n, seeded)."""
    bounded = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 24},
            "country": {"type": "string", "maxLength": 24},
            "population": {"type": "integer", "minimum": 0},
        },
        "required": ["city", "country", "population"],
        "additionalProperties": False,
    }
    schema_format = {"type": "json_schema", "json_schema": {"name": "city", "schema": bounded}}
    texts = {}
    for k in (None, 0):  # the stack's n-gram drafts, then none
        extra = {} if k is None else {"speculation": {"num_speculative_tokens": k}}
        for n, seed in ((16, 1), (9, 100)):
            answer = client.chat.completions.create(
                model=MODEL, messages=ASK, max_tokens=128, temperature=1.0, seed=seed, n=n,
                response_format=schema_format, extra_body=extra,
            )  # fmt: skip
            for choice in answer.choices:
                value = json.loads(choice.message.content)
                assert set(value) == {"city", "country", "population"} and choice.finish_reason == "stop"
                assert isinstance(value["population"], int) and len(value["city"]) <= 24
                texts.setdefault(k, []).append(choice.message.content)
    assert len(texts[None]) == len(texts[0]) == 25
    assert texts[None] == texts[0]  # n-gram drafts are one-hot: seeded samples are plain decoding's


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CLOCK_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
WEATHER_ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_a_named_tool_choice_is_a_call_of_that_function_as_in_process_structured_output(client, in_process):
    named = {"type": "function", "function": {"name": "get_weather"}}
    schema = StructuredOutputsParams(json=WEATHER_TOOL["function"]["parameters"])
    params = SamplingParams(temperature=0, max_tokens=64, structured_outputs=schema)
    expected = in_process.chat(WEATHER_ASK, params, use_tqdm=False, tools=[WEATHER_TOOL])[0].outputs[0]
    answer = client.chat.completions.create(
        model=MODEL, messages=WEATHER_ASK, max_tokens=64, temperature=0, tools=[WEATHER_TOOL, CLOCK_TOOL],
        tool_choice=named,
    )  # fmt: skip
    (call,) = answer.choices[0].message.tool_calls
    assert answer.choices[0].message.content is None and answer.choices[0].finish_reason == "stop"
    assert call.type == "function" and call.function.name == "get_weather"
    assert call.function.arguments == expected.text
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city", "unit"} and arguments["unit"] in ("celsius", "fahrenheit")
    # the model is told the call's result and answers in words
    follow_up = WEATHER_ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"},
    ]
    reply = client.chat.completions.create(model=MODEL, messages=follow_up, max_tokens=16, temperature=0)
    assert reply.choices[0].message.content and not reply.choices[0].message.tool_calls


def test_required_tool_calls_name_only_the_tools_and_stream_whole(client):
    kwargs = dict(model=MODEL, messages=WEATHER_ASK, max_tokens=96, temperature=0, tools=[WEATHER_TOOL, CLOCK_TOOL],
                  tool_choice="required")  # fmt: skip
    answer = client.chat.completions.create(**kwargs)
    calls = answer.choices[0].message.tool_calls
    assert answer.choices[0].finish_reason == "tool_calls" and calls
    assert {c.function.name for c in calls} <= {"get_weather", "get_time"}
    assert all(isinstance(json.loads(c.function.arguments), dict) for c in calls)
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    streamed = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert [(d.function.name, d.function.arguments) for d in streamed] == [
        (c.function.name, c.function.arguments) for c in calls
    ]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    with pytest.raises(openai.BadRequestError, match='tool_choice "auto" is not supported'):
        client.chat.completions.create(model=MODEL, messages=WEATHER_ASK, max_tokens=8, tools=[WEATHER_TOOL])


def test_vllm_structured_outputs_choice_and_regex_on_completions(client, in_process):
    for structured in ({"choice": ["red", "green", "blue"]}, {"regex": "[0-9]{2}:[0-9]{2}"}):
        params = SamplingParams(temperature=0, max_tokens=16, structured_outputs=StructuredOutputsParams(**structured))
        expected = in_process.generate(PROMPT, params, use_tqdm=False)[0].outputs[0]
        answer = client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0, extra_body={"structured_outputs": structured}
        )
        assert answer.choices[0].text == expected.text and answer.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError, match="structured_outputs.regex: Regex parsing error"):
        client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=4, extra_body={"structured_outputs": {"regex": "(ab"}}
        )
    with pytest.raises(openai.BadRequestError, match="response_format must be"):
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, extra_body={"response_format": "json"})


def test_echo_with_logprobs_scores_the_prompt_as_lm_evaluation_harness_asks(client, in_process):
    """lm-evaluation-harness's loglikelihood request: echo, logprobs 1, one token; the prompt's tokens come
    back with their log-probabilities (the first one's null), as in-process prompt_logprobs."""
    context = "The capital of France is Paris"
    params = SamplingParams(temperature=0, max_tokens=1, logprobs=1, prompt_logprobs=1)
    expected = in_process.generate(context, params, use_tqdm=False)[0]
    answer = client.completions.create(model=MODEL, prompt=context, max_tokens=1, temperature=0, logprobs=1, echo=True)
    choice = answer.choices[0]
    assert choice.text == context + expected.outputs[0].text
    prompt_ids = expected.prompt_token_ids
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == len(prompt_ids) + 1 and logprobs.token_logprobs[0] is None
    want = [e[t].logprob for e, t in zip(expected.prompt_logprobs[1:], prompt_ids[1:])]
    assert logprobs.token_logprobs[1 : len(prompt_ids)] == pytest.approx(want, abs=1e-4)
    assert "".join(logprobs.tokens[: len(prompt_ids)]) == context
    assert logprobs.text_offset[len(prompt_ids)] == len(context)
    extra = client.completions.create(
        model=MODEL, prompt=context, max_tokens=1, temperature=0, extra_body={"prompt_logprobs": 0}
    ).choices[0].model_extra["prompt_logprobs"]  # fmt: skip
    assert extra[0] is None and len(extra) == len(prompt_ids)
    assert [entry[str(t)]["logprob"] for entry, t in zip(extra[1:], prompt_ids[1:])] == pytest.approx(want, abs=1e-4)
    whole = client.completions.create(model=MODEL, prompt=context, max_tokens=6, temperature=0, logprobs=1, echo=True)
    chunks = list(
        client.completions.create(
            model=MODEL, prompt=context, max_tokens=6, temperature=0, logprobs=1, echo=True, stream=True
        )
    )  # the echo goes out with the first chunk, as vLLM's
    assert chunks[0].choices[0].text.startswith(context)
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    streamed = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs]
    assert [t for lp in streamed for t in lp.tokens] == whole.choices[0].logprobs.tokens
    assert [t for lp in streamed for t in lp.token_logprobs] == whole.choices[0].logprobs.token_logprobs
    assert [t for lp in streamed for t in lp.text_offset] == whole.choices[0].logprobs.text_offset


def test_logprobs_of_a_completion_and_a_chat_are_in_process_logprobs(client, in_process):
    expected = in_process.generate(PROMPT, SamplingParams(temperature=0, max_tokens=12, logprobs=2), use_tqdm=False)
    want = expected[0].outputs[0].logprobs
    answer = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, logprobs=2)
    got = answer.choices[0].logprobs
    decode = in_process.get_tokenizer().decode
    assert got.tokens == [decode([t]) for t in expected[0].outputs[0].token_ids]
    assert got.token_logprobs == pytest.approx(
        [e[t].logprob for e, t in zip(want, expected[0].outputs[0].token_ids)], abs=1e-3
    )
    assert [list(top) for top in got.top_logprobs] == [
        [decode([t]) for t, lp in sorted(e.items(), key=lambda kv: kv[1].rank) if lp.rank <= 2] for e in want
    ]
    assert got.text_offset[0] == 0 and got.text_offset[1] == len(got.tokens[0])
    params = SamplingParams(temperature=0, max_tokens=12, logprobs=2)
    chat_expected = in_process.chat(CHAT, params, use_tqdm=False)[0].outputs[0]
    chat = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=12, temperature=0, logprobs=True, top_logprobs=2
    )
    content = chat.choices[0].logprobs.content
    assert [c.token for c in content] == [decode([t]) for t in chat_expected.token_ids]
    assert [c.logprob for c in content] == pytest.approx(
        [e[t].logprob for e, t in zip(chat_expected.logprobs, chat_expected.token_ids)], abs=1e-3
    )
    assert all(len(c.top_logprobs) == 2 and c.top_logprobs[0].logprob >= c.logprob - 1e-6 for c in content)
    streamed = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=12, temperature=0, logprobs=True, stream=True
    )
    tokens = [
        c.token for chunk in streamed for choice in chunk.choices if choice.logprobs for c in choice.logprobs.content
    ]
    assert tokens == [c.token for c in content]


def test_continuous_usage_stats_put_the_usage_so_far_in_every_chunk(client):
    """vLLM's stream_options.continuous_usage_stats, as its benchmark clients send it."""
    chunks = list(
        client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, stream=True,
            stream_options={"include_usage": True, "continuous_usage_stats": True},
        )
    )  # fmt: skip
    counts = [c.usage.completion_tokens for c in chunks]
    assert counts == sorted(counts) and counts[-1] == 24 and counts[0] < 24
    assert len({c.usage.prompt_tokens for c in chunks}) == 1 and chunks[0].usage.prompt_tokens > 0
    plain = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, stream=True,
                                            stream_options={"include_usage": True}))  # fmt: skip
    assert all(c.usage is None for c in plain[:-1]) and plain[-1].usage.completion_tokens == 4


def test_n_seeded_choices_are_reproducible_and_each_is_in_process_sampling(client, in_process):
    def ask() -> list[str]:
        answer = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0.9, seed=1234, n=2)
        return [c.text for c in sorted(answer.choices, key=lambda c: c.index)]

    first = ask()
    assert ask() == first
    expected = [
        in_process.generate(PROMPT, SamplingParams(temperature=0.9, max_tokens=20, seed=seed), use_tqdm=False)[0]
        .outputs[0]
        .text
        for seed in (1234, 1235)
    ]
    assert first == expected and first[0] != first[1]


def test_the_async_client_streams_a_completion_that_adds_up_to_the_whole(http_stack):
    async def both() -> tuple[str, str]:
        async with openai.AsyncOpenAI(base_url=http_stack.http_base_url, api_key="unused", max_retries=0) as c:
            whole = await c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=32, temperature=0)
            stream = await c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=32, temperature=0, stream=True)
            return whole.choices[0].text, "".join([chunk.choices[0].text async for chunk in stream])

    whole, streamed = asyncio.run(both())
    assert streamed == whole and whole


def test_token_id_prompts_and_several_prompts_come_back_in_order(client, in_process):
    ids = in_process.tokenizer.encode(PROMPT)
    answer = client.completions.create(model=MODEL, prompt=[ids, ids[:3]], max_tokens=8, temperature=0)
    expected = [
        in_process.generate({"prompt_token_ids": p}, _greedy(8), use_tqdm=False)[0].outputs[0].text
        for p in (ids, ids[:3])
    ]
    assert [c.text for c in sorted(answer.choices, key=lambda c: c.index)] == expected


def test_models_and_health(http_stack, client):
    assert [m.id for m in client.models.list()] == [MODEL]
    with urllib.request.urlopen(http_stack.http_base_url.removesuffix("/v1") + "/health", timeout=10) as response:
        assert response.status == 200


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(model="gpt-4"), openai.NotFoundError, "gpt-4"),
        (dict(temperature=-1), openai.BadRequestError, "temperature"),
        (dict(max_tokens=MAX_TOKENS_LIMIT + 1), openai.BadRequestError, "max_tokens"),
        (dict(logprobs=21), openai.BadRequestError, "logprobs must be an integer in [0, 20]"),
        (dict(extra_body={"tools": [{"type": "function"}]}), openai.BadRequestError, "tools"),
        (dict(extra_body={"structured_outputs": {"regex": "(ab"}}), openai.BadRequestError, "Regex parsing error"),
        (dict(n=0), openai.BadRequestError, "n must be"),
        (dict(extra_body={"min_tokens": 5}), openai.BadRequestError, "min_tokens (5) must be at most max_tokens (4)"),
    ],
)
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(client, kwargs, error, words):
    request = dict(model=MODEL, prompt=PROMPT, max_tokens=4) | kwargs
    with pytest.raises(error) as caught:
        client.completions.create(**request)
    assert words in caught.value.body["message"] and caught.value.body["type"]
    assert client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4).choices[0].text is not None


def test_a_body_that_is_not_json_is_a_400(http_stack):
    request = urllib.request.Request(http_stack.http_base_url + "/completions", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 400
    assert json.loads(caught.value.read())["error"]["message"] == "the request body is not JSON"


def test_closing_a_stream_midway_frees_every_kv_block(http_stack, client):
    """The gateway hears the client leave and ends the request there (its cancelled count, where a
    finished request would count as a success), and the verifier frees the sequence's blocks."""
    initial = http_stack.verifier_info()
    cancelled, finished = ended_requests(http_stack.gateway)
    stream = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=MAX_TOKENS_LIMIT, temperature=0, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    received = [next(stream) for _ in range(3)]
    assert any(chunk.choices[0].text for chunk in received)
    assert http_stack.verifier_info().num_sequences == 1
    stream.close()
    # within 3 s, where the 400 tokens would take longer; a released sequence leaves the verifier's count
    # before its blocks are freed: wait for both
    assert wait_for(lambda: _holds_nothing(http_stack.verifier_info(), initial.num_free_blocks), timeout=3)
    assert wait_for(lambda: ended_requests(http_stack.gateway) == (cancelled + 1, finished), timeout=3), (
        ended_requests(http_stack.gateway),
        (cancelled, finished),
    )


def _holds_nothing(info, free_blocks: int) -> bool:
    return info.num_sequences == 0 and info.num_free_blocks == free_blocks
