"""Requests to a running stack and what in-process decoding gives for them, shared by the end-to-end
suites: the prompts, streaming calls through the gateway, greedy and seeded requests, plain decoding's
tokens and the gateway's count of ended requests (the `plain_greedy` fixture is in conftest.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
from fitted_heads import write_fitted_eagle, write_fitted_mlp_speculator
from metrics_scrape import scrape, value

from splitspec import LLM, SamplingParams
from splitspec.entrypoints.client import build_request
from splitspec_protos import splitspec_v1_pb2 as pb
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc

PROMPTS = [
    [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6],
    [17, 3],
    list(range(30, 90)) + list(range(30, 50)),
    [100, 101, 102, 100, 101, 102, 100, 101, 102, 100, 101, 102, 100, 101],
]
MAX_TOKENS = 24


def generate(address: str, request: pb.GenerateRequest, timeout: float = 60) -> list[pb.GenerateResponse]:
    with grpc.insecure_channel(address) as channel:
        return list(pb_grpc.GatewayStub(channel).Generate(request, timeout=timeout))


def token_ids(responses: list[pb.GenerateResponse]) -> list[int]:
    return [t for r in responses for t in r.token_ids]


def generate_concurrently(address: str, requests: list[pb.GenerateRequest]) -> list[list[int]]:
    with ThreadPoolExecutor(len(requests)) as pool:
        return [token_ids(r) for r in pool.map(lambda req: generate(address, req), requests)]


def assert_seeded_samples_are_plain_decoding_s(address: str, model, seeds: list[int]) -> None:
    """Seeded sampled requests, four at once through the gateway, give plain in-process decoding's tokens."""
    requests = [
        build_request(p, temperature=0.8, top_p=0.95, max_tokens=MAX_TOKENS, ignore_eos=True, seed=s)
        for p, s in zip(PROMPTS, seeds)
    ]
    params = [
        SamplingParams(temperature=0.8, top_p=0.95, max_tokens=MAX_TOKENS, ignore_eos=True, seed=s) for s in seeds
    ]
    plain = LLM(str(model)).generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    assert generate_concurrently(address, requests) == [o.outputs[0].token_ids for o in plain]


def plain_greedy_tokens(model, prompt: list[int], max_tokens: int) -> list[int]:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return LLM(str(model)).generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0].outputs[0].token_ids


def greedy_request(prompt: list[int], max_tokens: int = MAX_TOKENS, **kw) -> pb.GenerateRequest:
    return build_request(prompt, temperature=0, max_tokens=max_tokens, ignore_eos=True, **kw)


def ended_requests(gateway) -> tuple[float, float]:
    """(cancelled, finished) requests as the gateway counts them on its /metrics (a counter appears there
    once it has counted something)."""
    families = scrape(gateway.metrics_port)
    failure, success = (families.get(name) for name in ("splitspec_request_failure", "splitspec_request_success"))
    return (
        value(failure, "_total", reason="cancelled") if failure else 0.0,
        value(success, "_total") if success else 0.0,
    )


# the delayed-link suites' seeded requests and drafters
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
SEEDS = [21, 22, 23, 24]


def _seeded(address: str) -> list[list[int]]:
    sampled = [
        build_request(p, temperature=0.8, top_p=0.95, max_tokens=MAX_TOKENS, ignore_eos=True, seed=s)
        for p, s in zip(PROMPTS, SEEDS)
    ]
    return generate_concurrently(address, sampled)


def _seeded_in_process(model, spec: dict) -> list[list[int]]:
    params = [
        SamplingParams(temperature=0.8, top_p=0.95, max_tokens=MAX_TOKENS, ignore_eos=True, seed=s) for s in SEEDS
    ]
    llm = LLM(str(model), speculative_config={"num_speculative_tokens": 3, **spec})
    return [o.outputs[0].token_ids for o in llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params)]


def _drafter(method: str, tiny_llama, tiny_drafts, tmp_path):
    if method == "draft_model":
        return tiny_drafts["llama"]
    if method == "mlp_speculator":
        return write_fitted_mlp_speculator(tmp_path / "speculator", tiny_llama, PROMPTS, GREEDY)
    if method == "eagle":
        return write_fitted_eagle(tmp_path / "eagle", tiny_llama, PROMPTS, GREEDY)
    return None
