"""EAGLE-3 in both placements: beside the target in the verifier (serve-verifier --speculative-config),
where the states never leave the process, and on a proposer pod, where the verifier returns the
inputs of the head's three target layers behind every committed token, through the gateway or
straight to the proposer (direct drafts). Output stays the target's own."""

from __future__ import annotations

import json
import signal

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
def head(eagle3_head):
    return eagle3_head


@pytest.fixture(scope="module")
def plain_greedy(tiny_llama_8_layers) -> list[list[int]]:
    outputs = LLM(str(tiny_llama_8_layers)).generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outputs]


def _assert_the_target_s_own_output(address: str, target, plain_greedy: list[list[int]]) -> None:
    """Greedy one at a time and four at once, and seeded, equal plain decoding; drafts pass often, not always."""
    responses = [
        generate(address, build_request(p, temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)) for p in PROMPTS
    ]
    assert [token_ids(r) for r in responses] == plain_greedy
    assert_drafts_pass_often_but_not_always([r[-1].speculation for r in responses])
    requests = [build_request(p, temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True) for p in PROMPTS]
    assert generate_concurrently(address, requests) == plain_greedy
    assert_seeded_samples_are_plain_decoding_s(address, target, [31, 32, 33, 34])


@pytest.mark.parametrize("route", ["through the gateway", "direct drafts"])
def test_eagle3_on_a_proposer_pod_is_the_target_s_own(tiny_llama_8_layers, head, plain_greedy, tmp_path, route):
    direct = ("--direct-drafts",) if route == "direct drafts" else ()
    with running_stack(
        tiny_llama_8_layers, tmp_path, method="eagle3", k=3, draft_model=head, gateway_args=("--fixed-k", *direct)
    ) as stack:
        with grpc.insecure_channel(stack.proposers[0].address) as channel:
            info = pb_grpc.ProposerStub(channel).GetInfo(pb.InfoRequest(), timeout=10)
        assert info.method == "eagle3" and info.needs_all_hidden_states and list(info.hidden_layers) == [2, 4, 5]
        _assert_the_target_s_own_output(stack.gateway.address, tiny_llama_8_layers, plain_greedy)


@pytest.mark.parametrize("tree_width", [1, 3])
def test_eagle3_beside_the_target_in_the_verifier_is_the_target_s_own(
    tiny_llama_8_layers, head, plain_greedy, tmp_path, tree_width
):
    """No proposer: the verifier reports its head, and the gateway has it draft every round there; with
    --tree-width 3 the head drafts trees (its top-k expansion), verified as trees."""
    config = json.dumps({"model": str(head), "num_speculative_tokens": 3})
    with running_stack(
        tiny_llama_8_layers,
        tmp_path,
        method="eagle3",
        k=3,
        num_proposers=0,
        verifier_args=("--speculative-config", config),
        gateway_args=("--fixed-k", "--tree-width", str(tree_width)),
        metrics=True,
    ) as stack:
        from metrics_scrape import scrape, value

        with grpc.insecure_channel(stack.verifier.address) as channel:
            info = pb_grpc.VerifierStub(channel).GetInfo(pb.InfoRequest(), timeout=10)
        assert info.speculator.method == "eagle3" and list(info.speculator.hidden_layers) == [2, 4, 5]
        assert info.speculator.num_speculative_tokens == 3
        _assert_the_target_s_own_output(stack.gateway.address, tiny_llama_8_layers, plain_greedy)
        rounds = scrape(stack.gateway.metrics_port)["splitspec_verify_rounds"]
        assert value(rounds, "_total", drafter="verifier") > 0
        assert value(rounds, "_total", drafter="proposer") == 0
        trees = scrape(stack.verifier.metrics_port).get("splitspec_verifier_tree_drafts")
        verified_as_trees = value(trees, "_total") if trees else 0
        assert (verified_as_trees > 0) == (tree_width > 1)


LONG_TOKENS = 160


@pytest.fixture(scope="module")
def long_head(tiny_llama_8_layers, tmp_path_factory):
    """Fitted to the target's long greedy answers to the first two prompts."""
    texts = target_texts(
        tiny_llama_8_layers, PROMPTS[:2], SamplingParams(temperature=0, max_tokens=LONG_TOKENS, ignore_eos=True)
    )
    return fit_eagle3(tmp_path_factory.mktemp("eagle3_long") / "head", tiny_llama_8_layers, texts, [2, 4, 5])


@pytest.mark.slow
@pytest.mark.parametrize("direct", [False, True])
def test_a_sequence_moved_to_another_proposer_drafts_again(tiny_llama_8_layers, long_head, tmp_path, direct):
    """The proposer holding two long streams is killed 30 tokens in (its links delayed, so that most
    rounds are still to come), when it holds states the gateway no longer has. The other has none of their states; the gateway has the
    verifier send them all again (a re-prefill, not counted as a verifier failover), and every round
    after the move but the few it takes drafts again, on the new proposer."""
    from e2e_requests import greedy_request, plain_greedy_tokens
    from metrics_scrape import drafts_served, scrape, value

    expected = [plain_greedy_tokens(tiny_llama_8_layers, PROMPTS[i], LONG_TOKENS) for i in range(2)]
    with running_stack(
        tiny_llama_8_layers,
        tmp_path,
        method="eagle3",
        k=3,
        draft_model=long_head,
        num_proposers=2,
        proposer_delay_ms=40,
        metrics=True,
        gateway_args=("--fixed-k", *(("--direct-drafts",) if direct else ())),
    ) as stack:
        with grpc.insecure_channel(stack.gateway.address) as channel:
            stub = pb_grpc.GatewayStub(channel)
            calls = [stub.Generate(greedy_request(PROMPTS[i], max_tokens=LONG_TOKENS), timeout=120) for i in range(2)]
            received = [[] for _ in calls]
            for call, tokens in zip(calls, received):
                while len(tokens) < 30:  # some rounds in: the proposer holds states the gateway no longer has
                    tokens += next(call).token_ids

            def held(proposer) -> float:
                return value(scrape(proposer.metrics_port)["splitspec_proposer_sequences"])

            victim = next(p for p in stack.proposers if held(p) > 0)
            (survivor,) = (p for p in stack.proposers if p is not victim)
            victim.stop(signal.SIGKILL)
            served_at_kill = drafts_served(survivor.metrics_port)
            finals = []
            for call, tokens in zip(calls, received):
                responses = list(call)
                tokens += token_ids(responses)
                finals.append(responses[-1].speculation)
        assert received == expected
        assert drafts_served(survivor.metrics_port) > served_at_kill, "the other proposer drafted for them"
        for spec in finals:  # rounds without drafts: the first, the failed call, the re-prefill's, max_tokens'
            assert spec.drafted_per_position[0] >= spec.num_rounds - 5, (
                spec.num_rounds,
                list(spec.drafted_per_position),
            )
        assert_drafts_pass_often_but_not_always(finals)
        failovers = scrape(stack.gateway.metrics_port).get("splitspec_verifier_failovers")
        assert failovers is None or value(failovers, "_total") == 0, "the re-prefill is not a verifier failover"
