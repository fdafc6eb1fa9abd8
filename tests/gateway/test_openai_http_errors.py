"""The HTTP API's refusals that need their own gateway (issue 18): API keys, no verifier; and how each
gRPC status maps to OpenAI's HTTP status and error shape. Tiny model, token-id prompts."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import openai
import pytest
from service_stack import free_port, running_stack, start_service, wait_for

from gateway_svc.openai_http import service_error_response
from splitspec.errors import ServiceError

PROMPT_IDS = [5, 6, 7, 8, 5, 6, 7]


@pytest.mark.parametrize(
    "code, status, error_type",
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error"),
        (grpc.StatusCode.UNAUTHENTICATED, 401, "authentication_error"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limit_error"),
        (grpc.StatusCode.UNAVAILABLE, 503, "service_unavailable"),
        (grpc.StatusCode.INTERNAL, 500, "server_error"),
    ],
)
def test_statuses_map_to_openai_errors(code, status, error_type):
    response = service_error_response(ServiceError(code, "what went wrong"))
    assert response.status_code == status
    assert json.loads(response.body) == {
        "error": {"message": "what went wrong", "type": error_type, "param": None, "code": code.name.lower()}
    }


def _status(url: str) -> int | None:
    """The HTTP status of a GET, None while nothing listens."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@pytest.mark.e2e
def test_keys_guard_the_api_but_not_health(tiny_llama, tmp_path):
    port = free_port()
    with running_stack(tiny_llama, tmp_path, gateway_args=("--http-port", str(port), "--api-key", "k1,k2")):
        base = f"http://127.0.0.1:{port}"
        with openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0) as client:
            with pytest.raises(openai.AuthenticationError) as caught:
                client.completions.create(model=str(tiny_llama), prompt=PROMPT_IDS, max_tokens=4)
            assert "API key" in caught.value.body["message"]
        body = json.dumps({"prompt": PROMPT_IDS, "max_tokens": 4}).encode()
        no_key = urllib.request.Request(base + "/v1/completions", data=body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as unauthorized:
            urllib.request.urlopen(no_key, timeout=10)
        assert unauthorized.value.code == 401
        with openai.OpenAI(base_url=base + "/v1", api_key="k2", max_retries=0) as client:
            answer = client.completions.create(model=str(tiny_llama), prompt=PROMPT_IDS, max_tokens=4)
            assert answer.usage.completion_tokens == 4
        assert _status(base + "/health") == 200


@pytest.mark.e2e
def test_without_a_verifier_health_and_requests_are_503(tiny_llama, tmp_path):
    port = free_port()
    dead = f"127.0.0.1:{free_port()}"
    gateway = start_service(
        "gateway",
        ["serve-gateway", "--model", str(tiny_llama), "--verifiers", dead, "--proposers", "", "--http-port", str(port)],
        tmp_path,
        wait=False,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_for(lambda: _status(base + "/health") is not None, 60)
        assert _status(base + "/health") == 503
        with openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0) as client:
            with pytest.raises(openai.InternalServerError) as refused:
                client.completions.create(model=str(tiny_llama), prompt=PROMPT_IDS, max_tokens=4)
        assert refused.value.status_code == 503 and "verifier" in refused.value.body["message"]
    finally:
        gateway.stop()


@pytest.mark.e2e
def test_a_request_over_the_concurrency_cap_is_a_429(tiny_llama, tmp_path):
    port = free_port()
    args = ("--http-port", str(port), "--max-concurrent-requests", "1", "--no-pipeline")
    # 50 ms each way to the verifier, one token per round, no steps pipelined: the first request runs on
    with running_stack(tiny_llama, tmp_path, gateway_args=args, network_delay_ms=50) as stack:
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0) as client:
            with ThreadPoolExecutor(1) as pool:
                first = pool.submit(
                    client.completions.create, model=str(tiny_llama), prompt=PROMPT_IDS, max_tokens=30,
                    extra_body={"ignore_eos": True, "speculation": {"num_speculative_tokens": 0}},
                )  # fmt: skip
                assert wait_for(lambda: stack.verifier_info().num_sequences == 1)
                with pytest.raises(openai.RateLimitError) as refused:
                    client.completions.create(model=str(tiny_llama), prompt=PROMPT_IDS, max_tokens=4)
                assert refused.value.status_code == 429 and "retry later" in refused.value.body["message"]
                assert first.result().usage.completion_tokens == 30


@pytest.mark.e2e
def test_a_model_without_a_tokenizer_streams_its_token_ids(tiny_llama, tmp_path):
    from e2e_requests import plain_greedy_tokens

    port = free_port()
    with running_stack(tiny_llama, tmp_path, gateway_args=("--http-port", str(port))):
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0) as client:
            request = {"model": str(tiny_llama), "prompt": PROMPT_IDS, "max_tokens": 12, "temperature": 0}
            extra = {"extra_body": {"ignore_eos": True}}
            whole = client.completions.create(**request, **extra)
            chunks = [c.choices[0] for c in client.completions.create(**request, **extra, stream=True) if c.choices]
    streamed = [t for c in chunks for t in (c.model_extra or {}).get("token_ids", [])]
    assert len([c for c in chunks if c.model_extra.get("token_ids")]) > 1, "ids arrive as they are generated"
    assert streamed == whole.choices[0].model_extra["token_ids"] == plain_greedy_tokens(tiny_llama, PROMPT_IDS, 12)
