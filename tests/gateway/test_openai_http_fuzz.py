"""The HTTP API under malformed bodies (hypothesis over the request shapes): every answer is a 2xx or a
4xx naming the problem, never a 5xx, and the server keeps serving. The gRPC side has benchmarks/fuzz.py."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

pytestmark = [pytest.mark.e2e, pytest.mark.default_model]

LONE_SURROGATES = st.sampled_from(["\ud800", "a\udfffb", "\udc00" * 3])
WILD = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.sampled_from([10**400, -(10**400), 2**31, 2**63, -1, 0]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
        LONE_SURROGATES,
    ),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6) | LONE_SURROGATES, inner, max_size=3)
    ),
    max_leaves=8,
)
TOKEN_IDS = st.lists(
    st.integers(min_value=0, max_value=200) | st.sampled_from([10**12, -1, 2**31, 49151]), min_size=1, max_size=6
)
USUAL = {
    "prompt": st.text(max_size=20) | TOKEN_IDS | st.lists(TOKEN_IDS, min_size=1, max_size=2) | LONE_SURROGATES,
    "messages": st.lists(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["user", "system", "assistant"]) | LONE_SURROGATES,
                "content": st.text(max_size=20) | LONE_SURROGATES,
            }
        ),
        min_size=1,
        max_size=2,
    ),
    "max_tokens": st.integers(min_value=1, max_value=3),
    "temperature": st.sampled_from([0, 0.5, 1.0]),
    "top_p": st.sampled_from([0.5, 1.0]),
    "top_k": st.sampled_from([-1, 5]),
    "seed": st.integers(min_value=0, max_value=2**63 - 1),
    "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=2),
    "stop_token_ids": TOKEN_IDS,
    "n": st.integers(min_value=1, max_value=2),
    "stream": st.booleans(),
    "stream_options": st.just({"include_usage": True}),
    "logprobs": st.none() | st.booleans() | st.integers(min_value=0, max_value=3),
    "echo": st.booleans(),
    "presence_penalty": st.sampled_from([0, 0.5, -2]),
    "frequency_penalty": st.sampled_from([0, 1.5]),
    "repetition_penalty": st.sampled_from([1, 1.3]),
    "min_p": st.sampled_from([0, 0.2, 1, -0.5, 2]),
    "logit_bias": st.dictionaries(st.sampled_from(["0", "17", "-3", "999999999", "x"]), WILD, max_size=2),
    "skip_special_tokens": st.booleans(),
    "spaces_between_special_tokens": st.booleans(),
    "response_format": st.sampled_from(
        [{"type": "text"}, {"type": "json_object"}, {"type": "json_schema", "json_schema": {"schema": {}}}]
    ),
    "structured_outputs": st.sampled_from([{"regex": "[a-z]+"}, {"choice": ["a", "b"]}, {"regex": "(ab"}]),
    "speculation": st.just({"num_speculative_tokens": 0}) | st.dictionaries(st.text(max_size=4), WILD, max_size=2),
    "user": st.text(max_size=10) | LONE_SURROGATES,
    "ignore_eos": st.booleans(),
    "return_token_ids": st.booleans(),
}


@st.composite
def bodies(draw, chat: bool) -> bytes:
    """Mostly a request of the right shape with some values wild; sometimes not an object at all."""
    shape = draw(st.sampled_from(["object", "object", "object", "other", "bytes"]))
    if shape == "bytes":
        return draw(st.binary(max_size=30))
    if shape == "other":
        return json.dumps(draw(WILD), allow_nan=True).encode()
    main = "messages" if chat else "prompt"
    body = {}
    for name in [main, *draw(st.lists(st.sampled_from(sorted(USUAL)), max_size=3, unique=True))]:
        body[name] = draw(WILD if draw(st.integers(0, 4)) == 0 else USUAL[name])
    if draw(st.integers(0, 9)) == 0:  # a parameter no API has
        body[draw(st.text(max_size=5) | LONE_SURROGATES)] = draw(WILD)
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] > 3:  # bound the generation's time
        body["max_tokens"] = draw(st.sampled_from([1, 2, 0, -1, 10**30]))
    if isinstance(body.get("n"), int) and body["n"] > 2:
        body["n"] = 2
    return json.dumps(body, allow_nan=True).encode()


def _post(url: str, data: bytes) -> int:
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


@pytest.mark.parametrize("endpoint", ["completions", "chat/completions"])
def test_no_body_gets_a_server_error(default_model_stack, endpoint):
    url = f"{default_model_stack.http_base_url}/{endpoint}"
    seen: list[int] = []
    main = {"messages": [{"role": "user", "content": "hi"}]} if endpoint.startswith("chat") else {"prompt": "hi"}
    constrained = main | {"max_tokens": 3, "structured_outputs": {"choice": ["yes", "no"]}, "presence_penalty": 1}

    @settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(body=bodies(endpoint.startswith("chat")))
    @example(body=json.dumps(constrained).encode())  # one that must succeed, whatever the draws
    def answers_below_500(body: bytes) -> None:
        status = _post(url, body)
        seen.append(status)
        assert status < 500, f"{status} for {body[:300]!r}"

    answers_below_500()
    assert any(s == 200 for s in seen) and any(400 <= s < 500 for s in seen), sorted(set(seen))
    asked = {"messages": [{"role": "user", "content": "hi"}]} if endpoint.startswith("chat") else {"prompt": [5, 6]}
    assert _post(url, json.dumps(asked | {"max_tokens": 2}).encode()) == 200
