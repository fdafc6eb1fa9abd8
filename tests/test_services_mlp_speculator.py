"""Hidden states across the wire: verifier -> gateway -> proposer, with an MLP speculator drafting
from them in its own process. Output stays the target's own."""

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
from tiny_checkpoints import write_mlp_speculator

from protos import splitspec_v1_pb2 as pb
from protos import splitspec_v1_pb2_grpc as pb_grpc
from splitspec import LLM, SamplingParams
from splitspec.entrypoints.client import build_request

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def speculator_stack(tiny_llama, tmp_path_factory):
    speculator = write_mlp_speculator(
        tmp_path_factory.mktemp("speculator"), emb_dim=64, inner_dim=48, vocab_size=256, n_predict=3,
        tied=True, scale_input=True,
    )  # fmt: skip
    with running_stack(
        tiny_llama,
        tmp_path_factory.mktemp("speculator_logs"),
        method="mlp_speculator",
        k=3,
        draft_model=speculator,
        gateway_args=("--fixed-k",),  # every round drafts
    ) as stack:
        yield stack


def test_greedy_through_the_services_is_the_target_s_own_batch_1_and_4(speculator_stack, tiny_llama) -> None:
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    plain = LLM(str(tiny_llama)).generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    requests = [build_request(p, temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True) for p in PROMPTS]
    assert generate_concurrently(speculator_stack.gateway.address, requests) == [o.outputs[0].token_ids for o in plain]
    for request, own in zip(requests, plain):  # batch of one
        responses = generate(speculator_stack.gateway.address, request)
        assert [t for r in responses for t in r.token_ids] == own.outputs[0].token_ids
        # every round drafts from the state that crossed the wire, but the first (no hidden state yet)
        # and the last (max_tokens leaves no room for drafts)
        spec = responses[-1].speculation
        assert spec.drafted_per_position[0] == spec.num_rounds - 2


def test_seeded_sampling_through_the_services_is_plain_decoding_s(speculator_stack, tiny_llama) -> None:
    assert_seeded_samples_are_plain_decoding_s(speculator_stack.gateway.address, tiny_llama, [21, 22, 23, 24])


def test_the_proposer_says_it_needs_hidden_states(speculator_stack) -> None:
    with grpc.insecure_channel(speculator_stack.proposers[0].address) as channel:
        info = pb_grpc.ProposerStub(channel).GetInfo(pb.InfoRequest(), timeout=10)
    assert info.method == "mlp_speculator" and info.needs_hidden_states
