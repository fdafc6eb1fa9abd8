"""Hidden states across the wire: verifier -> gateway -> proposer, with an MLP speculator drafting
from them in its own process. Output stays the target's own."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from e2e_requests import MAX_TOKENS, PROMPTS, assert_seeded_samples_are_plain_decoding_s, generate, token_ids
from fitted_heads import assert_drafts_pass_often_but_not_always, write_fitted_mlp_speculator
from service_stack import running_stack

from splitspec import LLM, SamplingParams
from splitspec.entrypoints.client import build_request
from splitspec_protos import splitspec_v1_pb2 as pb
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def speculator_stack(tiny_llama, tmp_path_factory):
    # fitted to the target's greedy text on PROMPTS: drafts there pass often, not always
    speculator = write_fitted_mlp_speculator(tmp_path_factory.mktemp("speculator"), tiny_llama, PROMPTS, GREEDY)
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
    plain = LLM(str(tiny_llama)).generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY, use_tqdm=False)
    own = [o.outputs[0].token_ids for o in plain]
    requests = [build_request(p, temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True) for p in PROMPTS]
    with ThreadPoolExecutor(len(requests)) as pool:
        batched = list(pool.map(lambda r: generate(speculator_stack.gateway.address, r), requests))
    one_by_one = [generate(speculator_stack.gateway.address, r) for r in requests]
    for responses in (batched, one_by_one):
        assert [token_ids(r) for r in responses] == own
        assert_drafts_pass_often_but_not_always([r[-1].speculation for r in responses])
    for responses in one_by_one:
        # every round drafts from the state that crossed the wire, but the first (no hidden state yet)
        # and one that max_tokens leaves no room for drafts in
        spec = responses[-1].speculation
        assert spec.drafted_per_position[0] >= spec.num_rounds - 2


def test_seeded_sampling_through_the_services_is_plain_decoding_s(speculator_stack, tiny_llama) -> None:
    assert_seeded_samples_are_plain_decoding_s(speculator_stack.gateway.address, tiny_llama, [21, 22, 23, 24])


def test_the_proposer_says_it_needs_hidden_states(speculator_stack) -> None:
    with grpc.insecure_channel(speculator_stack.proposers[0].address) as channel:
        info = pb_grpc.ProposerStub(channel).GetInfo(pb.InfoRequest(), timeout=10)
    assert info.method == "mlp_speculator" and info.needs_hidden_states
