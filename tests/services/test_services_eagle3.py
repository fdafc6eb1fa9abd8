"""EAGLE-3 on a proposer pod: the verifier returns the inputs of the head's three target layers behind
every committed token, through the gateway or straight to the proposer (direct drafts), and output
stays the target's own."""

from __future__ import annotations

import grpc
import pytest
from e2e_requests import (
    MAX_TOKENS,
    PROMPTS,
    assert_seeded_samples_are_plain_decoding_s,
    generate,
    generate_concurrently,
    token_ids,
)
from eagle3_heads import fit_eagle3, target_texts
from fitted_heads import assert_drafts_pass_often_but_not_always
from service_stack import running_stack

from splitspec import LLM, SamplingParams
from splitspec.entrypoints.client import build_request
from splitspec_protos import splitspec_v1_pb2 as pb
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def head(tiny_llama_8_layers, tmp_path_factory):
    """Fitted to the target's greedy text on PROMPTS: drafts there pass often, not always."""
    texts = target_texts(tiny_llama_8_layers, PROMPTS, GREEDY)
    return fit_eagle3(tmp_path_factory.mktemp("eagle3") / "head", tiny_llama_8_layers, texts, [2, 4, 5])


@pytest.fixture(scope="module")
def plain_greedy(tiny_llama_8_layers) -> list[list[int]]:
    outputs = LLM(str(tiny_llama_8_layers)).generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outputs]


@pytest.mark.parametrize("route", ["through the gateway", "direct drafts"])
def test_eagle3_on_a_proposer_pod_is_the_target_s_own(tiny_llama_8_layers, head, plain_greedy, tmp_path, route):
    direct = ("--direct-drafts",) if route == "direct drafts" else ()
    with running_stack(
        tiny_llama_8_layers, tmp_path, method="eagle3", k=3, draft_model=head, gateway_args=("--fixed-k", *direct)
    ) as stack:
        with grpc.insecure_channel(stack.proposers[0].address) as channel:
            info = pb_grpc.ProposerStub(channel).GetInfo(pb.InfoRequest(), timeout=10)
        assert info.method == "eagle3" and info.needs_all_hidden_states and list(info.hidden_layers) == [2, 4, 5]
        address = stack.gateway.address
        responses = [
            generate(address, build_request(p, temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)) for p in PROMPTS
        ]
        assert [token_ids(r) for r in responses] == plain_greedy
        assert_drafts_pass_often_but_not_always([r[-1].speculation for r in responses])
        requests = [build_request(p, temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True) for p in PROMPTS]
        assert generate_concurrently(address, requests) == plain_greedy
        assert_seeded_samples_are_plain_decoding_s(address, tiny_llama_8_layers, [31, 32, 33, 34])
