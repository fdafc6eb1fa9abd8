"""Quantized weights through the three services: `serve-verifier --quantization` serves the quantized
target, `serve-proposer --quantization` drafts with a quantized draft model (the target in int4), and what the gateway
streams is the quantized target's own plain decoding (greedy one at a time and four at once, seeded
four at once), as in-process (tests/core/test_quantized_weights.py)."""

from __future__ import annotations

import pytest
from e2e_requests import MAX_TOKENS, PROMPTS, generate, generate_concurrently, greedy_request, token_ids
from service_stack import running_stack

from splitspec import LLM, SamplingParams
from splitspec.entrypoints.client import build_request

pytestmark = pytest.mark.e2e

GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
SEEDS = [41, 42, 43, 44]


def _plain(model, quantization: str | None, params: list[SamplingParams]) -> list[list[int]]:
    llm = LLM(str(model), quantization=quantization)
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outputs]


@pytest.mark.parametrize("method", ["ngram", "draft_model"])
def test_a_quantized_target_behind_the_gateway_decodes_as_it_does_alone(tiny_llama, tmp_path, method):
    quantization = "int8"
    plain_greedy = _plain(tiny_llama, quantization, [GREEDY] * len(PROMPTS))
    # float32 and int4 are other models: a verifier that served either would fail the checks below
    assert all(plain_greedy != _plain(tiny_llama, other, [GREEDY] * len(PROMPTS)) for other in (None, "int4"))
    seeded = [
        SamplingParams(temperature=0.8, top_p=0.95, max_tokens=MAX_TOKENS, ignore_eos=True, seed=s) for s in SEEDS
    ]
    # the draft: the target itself in four bits, right often but not always
    draft = {"draft_model": tiny_llama, "proposer_args": ("--quantization", "int4")}
    with running_stack(
        tiny_llama,
        tmp_path,
        method=method,
        k=3,
        verifier_args=("--quantization", quantization),
        gateway_args=("--fixed-k",),
        **(draft if method == "draft_model" else {}),
    ) as stack:
        address = stack.gateway.address
        responses = [generate(address, greedy_request(p)) for p in PROMPTS]
        assert [token_ids(r) for r in responses] == plain_greedy
        stats = [r[-1].speculation for r in responses]
        drafted, accepted = sum(s.num_draft_tokens for s in stats), sum(s.num_accepted_tokens for s in stats)
        assert 0 < accepted < drafted, f"{accepted} of {drafted} drafts accepted"
        assert generate_concurrently(address, [greedy_request(p) for p in PROMPTS]) == plain_greedy
        requests = [
            build_request(p, temperature=0.8, top_p=0.95, max_tokens=MAX_TOKENS, ignore_eos=True, seed=s)
            for p, s in zip(PROMPTS, SEEDS)
        ]
        sampled = generate_concurrently(address, requests)
        again = generate_concurrently(address, requests)
    if method == "ngram":  # one-hot drafts: the target's own seeded draws decide every token
        assert sampled == _plain(tiny_llama, quantization, seeded)
    else:  # sampled drafts change which draws decide; the law is the target's, and seeds reproduce
        assert sampled == again
