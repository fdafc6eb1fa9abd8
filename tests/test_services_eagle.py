"""EAGLE across the services: the verifier returns the state behind every committed token, the
gateway carries each row to the proposer exactly once, and output stays the target's own."""

from __future__ import annotations

import grpc
import pytest
from service_stack import running_stack
from test_services_e2e import (
    MAX_TOKENS,
    PROMPTS,
    assert_seeded_samples_are_plain_decoding_s,
    generate,
    generate_concurrently,
)
from tiny_checkpoints import write_eagle

from protos import splitspec_v1_pb2 as pb
from protos import splitspec_v1_pb2_grpc as pb_grpc
from splitspec import LLM, SamplingParams
from splitspec.entrypoints.client import build_request

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def eagle_stack(tiny_llama, tmp_path_factory):
    head = write_eagle(tmp_path_factory.mktemp("eagle") / "head", hidden_size=64, vocab_size=256, fc_bias=True)
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
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    return [
        o.outputs[0].token_ids
        for o in LLM(str(tiny_llama)).generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    ]


def test_greedy_batch_of_one_is_the_target_s_own(eagle_stack, plain_greedy) -> None:
    for prompt, own in zip(PROMPTS, plain_greedy):
        responses = generate(
            eagle_stack.gateway.address, build_request(prompt, temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
        )
        assert [t for r in responses for t in r.token_ids] == own
        spec = responses[-1].speculation
        # every round drafts but the first (no states yet) and those max_tokens leaves no room in
        assert spec.drafted_per_position[0] >= spec.num_rounds - 2


def test_greedy_batch_of_four_is_the_target_s_own(eagle_stack, plain_greedy) -> None:
    requests = [build_request(p, temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True) for p in PROMPTS]
    assert generate_concurrently(eagle_stack.gateway.address, requests) == plain_greedy


def test_seeded_sampling_through_the_services_is_plain_decoding_s(eagle_stack, tiny_llama) -> None:
    assert_seeded_samples_are_plain_decoding_s(eagle_stack.gateway.address, tiny_llama, [31, 32, 33, 34])


def test_the_proposer_says_it_needs_every_hidden_state(eagle_stack) -> None:
    with grpc.insecure_channel(eagle_stack.proposers[0].address) as channel:
        info = pb_grpc.ProposerStub(channel).GetInfo(pb.InfoRequest(), timeout=10)
    assert info.method == "eagle" and info.needs_hidden_states and info.needs_all_hidden_states
