"""Token trees through the services: `serve-gateway --tree-width 3` has the verifier draft n-gram trees
itself, or a proposer pod draft a draft model's trees (DraftStep.tree_width), and the verifier verify
each in one pass; output equals in-process plain decoding, greedy and seeded, and the verifier's
/metrics count the steps verified as trees. A tree drafted elsewhere reaches the verifier in
a VerifyStep's DraftToken.parent_distance; a malformed one is refused with INVALID_ARGUMENT."""

from __future__ import annotations

import queue

import grpc
import pytest
from e2e_requests import (
    PROMPTS,
    _seeded,
    _seeded_in_process,
    assert_seeded_samples_are_plain_decoding_s,
    generate_concurrently,
    greedy_request,
)
from metrics_scrape import scrape, value
from service_stack import running_stack

from splitspec import LLM, SamplingParams
from splitspec_protos import splitspec_v1_pb2 as pb
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

MAX_TOKENS = 40


@pytest.fixture(scope="module")
def tree_stack(tiny_llama, tmp_path_factory):
    with running_stack(
        tiny_llama,
        tmp_path_factory.mktemp("tree_logs"),
        k=8,
        ngram_on_proposers=False,
        gateway_args=("--tree-width", "3", "--fixed-k"),
        metrics=True,
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def proposer_tree_stack(tiny_llama, tiny_drafts, tmp_path_factory):
    with running_stack(
        tiny_llama,
        tmp_path_factory.mktemp("proposer_tree_logs"),
        method="draft_model",
        draft_model=tiny_drafts["llama"],
        k=8,
        gateway_args=("--tree-width", "3", "--fixed-k", "--no-verifier-ngram"),
        metrics=True,
    ) as stack:
        yield stack


def _assert_greedy_is_plain_decoding_s_through_trees(stack, model) -> None:
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    plain = LLM(str(model)).generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    requests = [greedy_request(p, MAX_TOKENS) for p in PROMPTS]
    assert generate_concurrently(stack.gateway.address, requests) == [o.outputs[0].token_ids for o in plain]
    trees = value(scrape(stack.verifier.metrics_port)["splitspec_verifier_tree_drafts"], "_total")
    assert trees > 0, "no step was verified as a tree"


def test_greedy_and_seeded_output_through_ngram_trees_is_plain_decoding_s(tree_stack, tiny_llama) -> None:
    _assert_greedy_is_plain_decoding_s_through_trees(tree_stack, tiny_llama)
    assert_seeded_samples_are_plain_decoding_s(tree_stack.gateway.address, tiny_llama, [41, 42, 43, 44])


def test_a_proposer_pod_s_draft_model_trees_give_plain_greedy_output(proposer_tree_stack, tiny_llama) -> None:
    _assert_greedy_is_plain_decoding_s_through_trees(proposer_tree_stack, tiny_llama)


def test_a_proposer_pod_s_sampled_trees_give_in_process_seeded_output(proposer_tree_stack, tiny_llama, tiny_drafts):
    """Sampled trees carry each token's q (drawn without replacement: each sibling's differs), which
    reaches the verifier intact: seeded output is the in-process engine's with the same drafter."""
    trees = value(scrape(proposer_tree_stack.verifier.metrics_port)["splitspec_verifier_tree_drafts"], "_total")
    spec = {"method": "draft_model", "model": str(tiny_drafts["llama"]), "num_speculative_tokens": 8}
    in_process = _seeded_in_process(tiny_llama, {**spec, "adaptive": False, "tree_width": 3})
    assert _seeded(proposer_tree_stack.gateway.address) == in_process
    after = value(scrape(proposer_tree_stack.verifier.metrics_port)["splitspec_verifier_tree_drafts"], "_total")
    assert after > trees, "no sampled step was verified as a tree"


def _step(stub, seq_id: str, step: pb.VerifyStep) -> pb.VerifierResponse:
    """Start a sequence on [5, 6, 7, 8], send `step` once the start is acknowledged (a stream's calls run
    concurrently), release it; the step's response."""
    calls: queue.Queue = queue.Queue()
    start = pb.VerifierRequest(call_id=1, seq_id=seq_id)
    start.start.token_ids.extend([5, 6, 7, 8])
    calls.put(start)
    responses = stub.Verify(iter(calls.get, None))
    assert next(responses).WhichOneof("kind") == "ack"
    calls.put(pb.VerifierRequest(call_id=2, seq_id=seq_id, step=step))
    response = next(responses)
    release = pb.VerifierRequest(call_id=3, seq_id=seq_id)
    release.release.SetInParent()
    calls.put(release)
    calls.put(None)
    list(responses)
    return response


def test_a_tree_sent_in_a_step_is_verified_and_a_malformed_one_refused(tree_stack, tiny_llama) -> None:
    greedy = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    (plain,) = LLM(str(tiny_llama)).generate([{"prompt_token_ids": [5, 6, 7, 8]}], greedy, use_tqdm=False)
    first, second, third = plain.outputs[0].token_ids
    with grpc.insecure_channel(tree_stack.verifier.address) as channel:
        stub = pb_grpc.VerifierStub(channel)
        tree = pb.VerifyStep(committed_len=4, every_draft=True)
        # 9 and 10 follow the last committed token, 11 follows 9: parents -1, -1, 0
        tree.drafts.extend([pb.DraftToken(token_id=9), pb.DraftToken(token_id=10, parent_distance=2)])
        tree.drafts.append(pb.DraftToken(token_id=11, parent_distance=2))
        accepted = _step(stub, "tree", tree)
        assert accepted.WhichOneof("kind") == "result", accepted.error.message
        assert accepted.result.num_drafted == 3
        # the target's own continuation as the second branch: the result says which tokens were kept
        branching = pb.VerifyStep(committed_len=4, every_draft=True)
        branching.drafts.extend(
            [pb.DraftToken(token_id=(first + 1) % 256), pb.DraftToken(token_id=first, parent_distance=2)]
        )
        branching.drafts.append(pb.DraftToken(token_id=second))
        kept = _step(stub, "branching", branching)
        assert list(kept.result.token_ids) == [first, second, third]
        assert list(kept.result.tree_path) == [1, 2]
        bad = pb.VerifyStep(committed_len=4)
        bad.drafts.extend([pb.DraftToken(token_id=9, parent_distance=2)])
        refused = _step(stub, "bad", bad)
        assert refused.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "parent_distance" in refused.error.message
        twins = pb.VerifyStep(committed_len=4)
        twins.drafts.extend([pb.DraftToken(token_id=9), pb.DraftToken(token_id=9, parent_distance=2)])
        refused = _step(stub, "twins", twins)
        assert "distinct" in refused.error.message
