"""EAGLE across the services: the verifier returns the state behind every committed token, the
gateway carries each row to the proposer exactly once, and output stays the target's own."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from e2e_requests import MAX_TOKENS, PROMPTS, assert_seeded_samples_are_plain_decoding_s, generate, token_ids
from fitted_heads import assert_drafts_pass_often_but_not_always, write_fitted_eagle
from service_stack import running_stack

from splitspec import LLM, SamplingParams
from splitspec.entrypoints.client import build_request
from splitspec_protos import splitspec_v1_pb2 as pb
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def eagle_stack(tiny_llama, tmp_path_factory):
    # fitted to the target's greedy text on PROMPTS: drafts there pass often, not always
    head = write_fitted_eagle(tmp_path_factory.mktemp("eagle") / "head", tiny_llama, PROMPTS, GREEDY)
    with running_stack(
        tiny_llama,
        tmp_path_factory.mktemp("eagle_logs"),
        method="eagle",
        k=3,
        draft_model=head,
        gateway_args=("--fixed-k",),  # every round drafts
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def plain_greedy(tiny_llama) -> list[list[int]]:
    return [
        o.outputs[0].token_ids
        for o in LLM(str(tiny_llama)).generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY, use_tqdm=False)
    ]


def test_greedy_batch_of_one_is_the_target_s_own(eagle_stack, plain_greedy) -> None:
    """Rounds that accept several drafts hand the proposer several rows at once; it drafts on from them."""
    outputs = []
    for prompt, own in zip(PROMPTS, plain_greedy):
        responses = generate(
            eagle_stack.gateway.address, build_request(prompt, temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
        )
        assert token_ids(responses) == own
        spec = responses[-1].speculation
        # every round drafts but the first (no states yet) and one that max_tokens leaves no room in
        assert spec.drafted_per_position[0] >= spec.num_rounds - 2
        outputs.append(spec)
    assert_drafts_pass_often_but_not_always(outputs)


def test_greedy_batch_of_four_is_the_target_s_own(eagle_stack, plain_greedy) -> None:
    requests = [build_request(p, temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True) for p in PROMPTS]
    with ThreadPoolExecutor(len(requests)) as pool:
        responses = list(pool.map(lambda r: generate(eagle_stack.gateway.address, r), requests))
    assert [token_ids(r) for r in responses] == plain_greedy
    assert_drafts_pass_often_but_not_always([r[-1].speculation for r in responses])


def test_seeded_sampling_through_the_services_is_plain_decoding_s(eagle_stack, tiny_llama) -> None:
    assert_seeded_samples_are_plain_decoding_s(eagle_stack.gateway.address, tiny_llama, [31, 32, 33, 34])


def test_the_proposer_says_it_needs_every_hidden_state(eagle_stack) -> None:
    with grpc.insecure_channel(eagle_stack.proposers[0].address) as channel:
        info = pb_grpc.ProposerStub(channel).GetInfo(pb.InfoRequest(), timeout=10)
    assert info.method == "eagle" and info.needs_hidden_states and info.needs_all_hidden_states
