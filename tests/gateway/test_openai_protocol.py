"""OpenAI request bodies as GenerateRequests (gateway_svc/openai_protocol.py): pure translation."""

from __future__ import annotations

import json
import re

import pytest

from gateway_svc.openai_protocol import (
    InvalidRequest,
    chat_choices,
    chat_logprobs,
    completion_choices,
    completion_logprobs,
    returns_token_ids,
)
from gateway_svc.tool_calls import tool_calls
from splitspec_protos import splitspec_v1_pb2 as pb


def test_several_prompts_times_n_are_choices_in_openai_order_with_seed_plus_j():
    choices = completion_choices({"prompt": ["a", "b"], "n": 2, "seed": 7, "max_tokens": 5}, 16)
    assert [(c.index, c.prompt_index, c.request.prompt, c.request.sampling.seed) for c in choices] == [
        (0, 0, "a", 7), (1, 0, "a", 8), (2, 1, "b", 7), (3, 1, "b", 8),
    ]  # fmt: skip
    assert all(c.request.sampling.max_tokens == 5 for c in choices)


def test_the_largest_seed_wraps_to_the_smallest_for_the_next_choice():
    choices = completion_choices({"prompt": "a", "n": 2, "seed": 2**63 - 1}, 16)
    assert [c.request.sampling.seed for c in choices] == [2**63 - 1, -(2**63)]


def test_token_id_prompts_and_defaults():
    (choice,) = completion_choices({"prompt": [1, 2, 3]}, 16)
    assert list(choice.request.prompt_token_ids) == [1, 2, 3] and choice.request.sampling.max_tokens == 16
    assert not choice.request.sampling.HasField("seed") and not choice.request.sampling.HasField("temperature")


def test_chat_messages_join_text_parts_and_take_max_completion_tokens():
    body = {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}],
        "max_completion_tokens": 9,
    }
    (choice,) = chat_choices(body, 100)
    assert [(m.role, m.content) for m in choice.request.messages] == [("user", "hi there")]
    assert choice.request.sampling.max_tokens == 9


@pytest.mark.parametrize(
    "body, words",
    [
        ({"prompt": "a", "logprobs": 21}, "logprobs must be an integer in [0, 20]"),
        ({"prompt": "a", "tools": [{"type": "function"}], "best_of": 2}, "best_of, tools"),
        ({"prompt": "a", "logit_bias": {"x": 1}}, "logit_bias keys are token ids in [0, 2^31), got 'x'"),
        ({"prompt": "a", "logit_bias": {"-3": 1}}, "logit_bias keys are token ids"),
        ({"prompt": "a", "logit_bias": {"5": "up"}}, "logit_bias[5] must be a finite number"),
        ({"prompt": "a", "logit_bias": [5]}, "logit_bias must be an object"),
        ({"prompt": "a", "min_p": "low"}, "min_p must be a finite number"),
        ({"prompt": "a", "skip_special_tokens": 0}, "skip_special_tokens must be true or false"),
        ({"prompt": "a", "presence_penalty": "high"}, "presence_penalty must be a finite number"),
        ({"prompt": "a", "n": 17}, "n must be an integer in [1, 16]"),
        ({"prompt": "a", "min_tokens": -1}, "min_tokens must be an integer in [0, "),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens must be an integer"),
        ({"prompt": "a", "temperature": "hot"}, "temperature must be a finite number"),
        ({"prompt": "a", "stop": [1]}, "stop must be a string or a list of strings"),
        ({"prompt": [1, "x"]}, "prompt must be"),
        ({}, "prompt is required"),
        ({"prompt": "a", "user": 7}, "user must be a string"),
        ({"prompt": "a", "user": "u" * 257}, "user must be a string of at most 256"),
        ({"prompt": [10**12]}, "token ids are integers in [0, 2^31), got 1000000000000"),
        ({"prompt": [[1], [2, -1]]}, "got -1"),
        ({"prompt": "\ud800"}, "prompt is not valid Unicode text: it holds the lone surrogate \\ud800"),
        ({"prompt": "a", "temperature": float("nan")}, "temperature must be a finite number"),
        ({"prompt": "a", "top_p": 10**400}, "top_p must be a finite number"),
        ({"prompt": "a", "stop_token_ids": [2**31]}, "stop_token_ids: token ids"),
        ({"prompt": "a", "speculation": {"k": 10**400}}, "speculation holds a value"),
        ({"prompt": "a", "\udc00": 1}, "unsupported parameters: \\udc00"),
    ],
)
def test_bad_bodies_name_what_is_wrong(body, words):
    with pytest.raises(InvalidRequest) as caught:
        completion_choices(body, 16)
    assert words in str(caught.value)


def test_the_user_is_the_session_that_keeps_requests_on_one_proposer():
    assert completion_choices({"prompt": "a", "user": "alice"}, 16)[0].request.session_id == "alice"


def test_neutral_values_of_unsupported_parameters_pass():
    assert completion_choices({"prompt": "a", "logprobs": None, "best_of": 1, "echo": False}, 16)
    assert chat_choices({"messages": [{"role": "user", "content": "a"}], "use_beam_search": False}, 16)
    with pytest.raises(InvalidRequest, match="unsupported parameters: best_of, use_beam_search"):
        completion_choices({"prompt": "a", "best_of": 2, "use_beam_search": True}, 16)


def test_min_p_logit_bias_and_decoding_options_reach_the_request():
    body = {"prompt": "a", "min_p": 0.25, "logit_bias": {"7": -100, "12": 3.5}, "skip_special_tokens": False}
    s = completion_choices(body, 16)[0].request.sampling
    assert (s.min_p, dict(s.logit_bias), s.skip_special_tokens) == (0.25, {7: -100.0, 12: 3.5}, False)
    assert not s.HasField("spaces_between_special_tokens")
    chat = {"messages": [{"role": "user", "content": "a"}], "spaces_between_special_tokens": False, "logit_bias": {}}
    s = chat_choices(chat, 16)[0].request.sampling
    assert not s.spaces_between_special_tokens and not s.logit_bias and not s.HasField("skip_special_tokens")


def test_response_format_and_structured_outputs_reach_the_request():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = {"prompt": "a", "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
    assert json.loads(completion_choices(body, 16)[0].request.sampling.structured_outputs.json) == schema
    body = {"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}}
    assert chat_choices(body, 16)[0].request.sampling.structured_outputs.json_object
    assert not completion_choices({"prompt": "a", "response_format": {"type": "text"}}, 16)[
        0
    ].request.sampling.HasField("structured_outputs")
    body = {"prompt": "a", "structured_outputs": {"choice": ["x", "y"]}}
    assert list(completion_choices(body, 16)[0].request.sampling.structured_outputs.choice) == ["x", "y"]


@pytest.mark.parametrize(
    "body, words",
    [
        ({"response_format": {"type": "yaml"}}, "response_format must be"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "json_schema.schema must be"),
        ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, "not both"),
        ({"structured_outputs": {"regex": 5}}, "structured_outputs.regex must be a string"),
        ({"structured_outputs": {"choice": "x"}}, "structured_outputs.choice must be a list of strings"),
        ({"structured_outputs": {"structural_tag": {}}}, "unsupported keys structural_tag"),
        ({"structured_outputs": {"json": {"x": float("nan")}}}, "holds a value JSON cannot carry"),
    ],
)
def test_bad_structured_outputs_name_what_is_wrong(body, words):
    with pytest.raises(InvalidRequest, match=re.escape(words)):
        completion_choices({"prompt": "a", **body}, 16)


def test_penalties_reach_the_request():
    body = {"prompt": "a", "presence_penalty": 0.5, "frequency_penalty": -1, "repetition_penalty": 1.2}
    (choice,) = completion_choices(body, 16)
    s = choice.request.sampling
    assert (s.presence_penalty, s.frequency_penalty, s.repetition_penalty) == (0.5, -1.0, 1.2)
    assert not completion_choices({"prompt": "a"}, 16)[0].request.sampling.HasField("repetition_penalty")


def test_chat_text_must_be_valid_unicode():
    with pytest.raises(InvalidRequest, match="messages.0..content is not valid Unicode") as caught:
        chat_choices({"messages": [{"role": "user", "content": "hi \ud800"}]}, 16)
    assert caught.value.param == "messages[0].content"


def test_chat_needs_messages_with_roles():
    with pytest.raises(InvalidRequest, match="messages must be a non-empty list"):
        chat_choices({"messages": []}, 16)
    with pytest.raises(InvalidRequest, match=r"messages\[0\] must be an object with a role"):
        chat_choices({"messages": [{"content": "x"}]}, 16)


@pytest.mark.parametrize("body, default, expected", [({}, False, False), ({}, True, True),
                                                     ({"return_token_ids": False}, True, False),
                                                     ({"return_token_ids": True}, False, True)])  # fmt: skip
def test_token_ids_are_returned_when_asked_and_by_default_without_a_tokenizer(body, default, expected):
    assert returns_token_ids(body, default) is expected


def test_return_token_ids_must_be_a_boolean():
    with pytest.raises(InvalidRequest, match="return_token_ids"):
        returns_token_ids({"return_token_ids": "yes"})


def test_vllm_s_min_tokens_and_include_stop_str_in_output_are_carried_to_the_gateway():
    body = {"prompt": "a", "min_tokens": 5, "include_stop_str_in_output": True}
    sampling = completion_choices(body, 16)[0].request.sampling
    assert (sampling.min_tokens, sampling.include_stop_str_in_output) == (5, True)
    sampling = completion_choices({"prompt": "a"}, 16)[0].request.sampling
    assert (sampling.min_tokens, sampling.include_stop_str_in_output) == (0, False)
    with pytest.raises(InvalidRequest, match="include_stop_str_in_output must be true or false"):
        completion_choices({"prompt": "a", "include_stop_str_in_output": 1}, 16)


def test_truncate_prompt_tokens_is_carried_and_must_be_positive():
    assert (
        completion_choices({"prompt": "a", "truncate_prompt_tokens": 7}, 16)[0].request.sampling.truncate_prompt_tokens
        == 7
    )
    with pytest.raises(InvalidRequest, match="truncate_prompt_tokens must be an integer in \\[1, "):
        completion_choices({"prompt": "a", "truncate_prompt_tokens": 0}, 16)


def test_logprobs_are_asked_as_each_endpoint_spells_them():
    assert completion_choices({"prompt": "a", "logprobs": 3}, 16)[0].request.sampling.logprobs == 3
    assert not completion_choices({"prompt": "a"}, 16)[0].request.sampling.HasField("logprobs")
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert chat_choices(chat | {"logprobs": True, "top_logprobs": 2}, 16)[0].request.sampling.logprobs == 2
    assert chat_choices(chat | {"logprobs": True}, 16)[0].request.sampling.logprobs == 0
    assert not chat_choices(chat | {"logprobs": False}, 16)[0].request.sampling.HasField("logprobs")
    with pytest.raises(InvalidRequest, match="top_logprobs needs logprobs set to true"):
        chat_choices(chat | {"top_logprobs": 2}, 16)
    with pytest.raises(InvalidRequest, match="logprobs must be true or false"):
        chat_choices(chat | {"logprobs": 2}, 16)


def test_logprobs_in_openai_s_shapes():
    """The generated token first on the wire, then the top tokens; OpenAI lists the top ones by rank."""
    entries = [
        pb.TokenLogprobs(token_ids=[7, 3, 4], logprobs=[-2.0, -0.5, -1.0], ranks=[3, 1, 2]),
        pb.TokenLogprobs(token_ids=[3, 9], logprobs=[-0.125, -3.0], ranks=[1, 2]),
    ]
    text = {3: "a", 4: "bc", 7: "xyz", 9: "q"}.__getitem__
    chat = chat_logprobs(entries, 2, text)["content"]
    assert chat[0] == {
        "token": "xyz",
        "logprob": -2.0,
        "bytes": [120, 121, 122],
        "top_logprobs": [
            {"token": "a", "logprob": -0.5, "bytes": [97]},
            {"token": "bc", "logprob": -1.0, "bytes": [98, 99]},
        ],
    }
    assert [t["token"] for t in chat[1]["top_logprobs"]] == ["a", "q"]
    assert completion_logprobs(entries, 1, text, 10) == {
        "tokens": ["xyz", "a"],
        "token_logprobs": [-2.0, -0.125],
        "top_logprobs": [{"a": -0.5}, {"a": -0.125}],
        "text_offset": [10, 13],
    }


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}
HI = [{"role": "user", "content": "hi"}]


def test_a_named_function_constrains_the_answer_to_its_arguments():
    body = {
        "messages": HI,
        "tools": [WEATHER, TIME],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }
    (choice,) = chat_choices(body, 16)
    assert json.loads(choice.request.sampling.structured_outputs.json) == WEATHER["function"]["parameters"]
    assert json.loads(choice.request.tools_json) == [WEATHER, TIME]
    calls = tool_calls(choice.tool_mode, '{"city": "Oslo"}')
    assert [c["function"] for c in calls] == [{"name": "get_weather", "arguments": '{"city": "Oslo"}'}]
    assert calls[0]["id"].startswith("call_") and calls[0]["type"] == "function"
    assert tool_calls(choice.tool_mode, '{"city": "Os') is None  # cut off: no call


def test_required_constrains_the_answer_to_a_list_of_calls_of_the_tools():
    body = {"messages": HI, "tools": [WEATHER, TIME], "tool_choice": "required"}
    (choice,) = chat_choices(body, 16)
    schema = json.loads(choice.request.sampling.structured_outputs.json)
    assert schema["type"] == "array" and schema["minItems"] == 1 and "maxItems" not in schema
    names = [option["properties"]["name"]["enum"] for option in schema["items"]["anyOf"]]
    assert names == [["get_weather"], ["get_time"]]
    single = chat_choices(body | {"parallel_tool_calls": False}, 16)[0]
    assert json.loads(single.request.sampling.structured_outputs.json)["maxItems"] == 1
    text = '[{"name": "get_time", "parameters": {}}, {"name": "get_weather", "parameters": {"city": "Rome"}}]'
    calls = tool_calls(choice.tool_mode, text)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("get_time", {}),
        ("get_weather", {"city": "Rome"}),
    ]


def test_tool_choice_none_shows_the_tools_and_leaves_the_answer_free():
    (choice,) = chat_choices({"messages": HI, "tools": [WEATHER], "tool_choice": "none"}, 16)
    assert choice.tool_mode is None and not choice.request.sampling.HasField("structured_outputs")
    assert json.loads(choice.request.tools_json) == [WEATHER]


def test_a_conversation_with_calls_and_their_results_reaches_the_template():
    messages = HI + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12 C, rain"},
    ]  # fmt: skip
    (choice,) = chat_choices({"messages": messages, "tools": [WEATHER], "tool_choice": "none"}, 16)
    assistant, tool = choice.request.messages[1], choice.request.messages[2]
    assert json.loads(assistant.tool_calls_json)[0]["function"]["name"] == "get_weather" and assistant.content == ""
    assert (tool.role, tool.tool_call_id, tool.content) == ("tool", "call_1", "12 C, rain")


@pytest.mark.parametrize(
    "body, words",
    [
        ({"tools": [WEATHER]}, 'tool_choice "auto" is not supported'),
        ({"tools": [WEATHER], "tool_choice": "auto"}, 'tool_choice "auto" is not supported'),
        ({"tool_choice": "required"}, "tool_choice needs tools"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "'nope', which is not",
        ),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice must be"),
        ({"tools": [{"type": "function"}], "tool_choice": "required"}, "tools[0] must be"),
        ({"tools": [WEATHER, WEATHER], "tool_choice": "required"}, "a second function named 'get_weather'"),
        (
            {"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
            "drop response_format",
        ),
        ({"messages": [{"role": "assistant", "tool_calls": "x"}]}, "messages[0].tool_calls must be a list"),
    ],
)
def test_bad_tool_requests_name_what_is_wrong(body, words):
    with pytest.raises(InvalidRequest, match=re.escape(words)):
        chat_choices({"messages": HI} | body, 16)
