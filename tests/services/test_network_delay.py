"""The services with every link between them delayed (a TCP proxy, 3 ms each way): greedy and seeded
output equal in-process output for every drafting method (tests/entrypoints/test_up.py checks that
`splitspec up --network-delay-ms` puts the proxies on its links)."""

from __future__ import annotations

import time

import pytest
from e2e_requests import (
    GREEDY,
    MAX_TOKENS,
    PROMPTS,
    SEEDS,
    _drafter,
    _seeded,
    _seeded_in_process,
    assert_seeded_samples_are_plain_decoding_s,
    generate,
    generate_concurrently,
    greedy_request,
    token_ids,
)
from metrics_scrape import scrape, value
from service_stack import free_port, running_stack

from splitspec import LLM, SamplingParams

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # four stacks, about a minute

DELAY_MS = 3.0


@pytest.mark.parametrize(
    "method, ngram_on_proposers",
    [("ngram", False), ("ngram", True), ("draft_model", True), ("mlp_speculator", True), ("eagle", True)],
)
def test_output_through_delayed_links_is_in_process_output(
    method, ngram_on_proposers, tiny_llama, tiny_drafts, tmp_path
):
    """ngram_on_proposers False: the verifier drafts the n-grams itself, and a round crosses one link."""
    drafter = _drafter(method, tiny_llama, tiny_drafts, tmp_path)
    plain = LLM(str(tiny_llama)).generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY, use_tqdm=False)
    with running_stack(
        tiny_llama,
        tmp_path,
        method=method,
        k=3,
        draft_model=drafter,
        gateway_args=("--fixed-k",),  # every round drafts, every round crosses both links
        network_delay_ms=DELAY_MS,
        ngram_on_proposers=ngram_on_proposers,
    ) as stack:
        address = stack.gateway.address
        started = time.monotonic()
        first = token_ids(generate(address, greedy_request(PROMPTS[0])))
        one_stream_s = time.monotonic() - started
        assert first == plain[0].outputs[0].token_ids
        assert generate_concurrently(address, [greedy_request(p) for p in PROMPTS]) == [
            o.outputs[0].token_ids for o in plain
        ]
        if method == "draft_model":  # sparse q: the draws follow the draft model's, as in-process
            assert _seeded(address) == _seeded_in_process(tiny_llama, {"method": method, "model": str(drafter)})
        else:  # one-hot drafts: plain decoding's draws
            assert_seeded_samples_are_plain_decoding_s(address, tiny_llama, SEEDS)
    # each round crosses its delayed links there and back: two in series where the drafter reads hidden
    # states; one where the proposer drafted the round ahead (and the two are crossed side by side); at
    # least 2 x 3 ms per link for each of the rounds 24 tokens take at most 4 a round. Where the verifier
    # drafts, the rounds are pipelined and share their waits: the stream still crosses the link once.
    rounds_waiting = MAX_TOKENS / 4 if ngram_on_proposers else 1
    links = 2 if method in ("mlp_speculator", "eagle") else 1
    assert one_stream_s >= rounds_waiting * links * 2 * DELAY_MS / 1000


def test_a_verifier_drafting_n_grams_itself_needs_no_proposer(tiny_llama, tmp_path):
    """With the proposer gone before the first request, drafts are still made and verified: by default
    the gateway asks the verifier for n-gram drafts and never calls a proposer."""
    plain = LLM(str(tiny_llama)).generate([{"prompt_token_ids": PROMPTS[0]}], GREEDY, use_tqdm=False)
    with running_stack(tiny_llama, tmp_path, k=3, gateway_args=("--fixed-k",), ngram_on_proposers=False) as stack:
        stack.proposers[0].stop()
        responses = generate(stack.gateway.address, greedy_request(PROMPTS[0]))
    assert token_ids(responses) == plain[0].outputs[0].token_ids
    assert responses[-1].speculation.num_draft_tokens > 0


@pytest.mark.parametrize("verifier_ngram", [False, True])
def test_a_far_away_proposer_is_not_waited_for(verifier_ngram, tiny_llama, tiny_drafts, tmp_path):
    """100 ms each way to the proposer, none to the verifier, and a target whose pass takes about a
    millisecond: a round that waits for drafts costs far more than they can win. The gateway measures
    the trip and verifies without drafts, or with the verifier's own n-grams where it has them, and the
    output is the same."""
    max_tokens = 48
    plain = (
        LLM(str(tiny_llama))
        .generate(
            [{"prompt_token_ids": PROMPTS[0]}], SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
        )[0]
        .outputs[0]
        .token_ids
    )
    port = free_port()
    with running_stack(
        tiny_llama,
        tmp_path,
        method="draft_model",
        k=3,
        draft_model=tiny_drafts["llama"],
        gateway_args=("--no-draft-ahead", "--metrics-port", str(port))
        + (() if verifier_ngram else ("--no-verifier-ngram",)),
        proposer_delay_ms=100,
    ) as stack:
        responses = generate(stack.gateway.address, greedy_request(PROMPTS[0], max_tokens=max_tokens))
        rounds = scrape(port)["splitspec_verify_rounds"]
    assert token_ids(responses) == plain
    if verifier_ngram:
        assert value(rounds, "_total", drafter="proposer") == 0, "the request stayed on the verifier's n-grams"
        return
    stats = responses[-1].speculation
    assert stats.num_rounds >= max_tokens // 2
    assert value(rounds, "_total", drafter="proposer") <= 2, (
        "rounds stopped waiting for the proposer once its trip was measured"
    )


def test_rounds_that_use_a_draft_made_ahead_keep_the_output_exact(tiny_llama, tmp_path):
    """The target as its own draft model: every draft is accepted and every guess right, so nearly every
    round uses the draft made while the last one was verified. Greedy output is plain decoding's, and
    seeded output is in-process draft_model speculation's (its sparse q steers the draws)."""
    metrics_port = free_port()
    plain = LLM(str(tiny_llama)).generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY, use_tqdm=False)
    with running_stack(
        tiny_llama,
        tmp_path,
        method="draft_model",
        k=3,
        draft_model=tiny_llama,
        gateway_args=("--fixed-k", "--metrics-port", str(metrics_port)),
        network_delay_ms=DELAY_MS,
    ) as stack:
        address = stack.gateway.address
        assert generate_concurrently(address, [greedy_request(p) for p in PROMPTS]) == [
            o.outputs[0].token_ids for o in plain
        ]
        ahead = scrape(metrics_port)["splitspec_draft_ahead"]
        hits, misses = value(ahead, "_total", outcome="hit"), value(ahead, "_total", outcome="miss")
        assert hits > 2 * misses, f"greedy rounds used drafts made ahead ({hits} hits, {misses} misses)"
        assert _seeded(address) == _seeded_in_process(tiny_llama, {"method": "draft_model", "model": str(tiny_llama)})
        ahead = scrape(metrics_port)["splitspec_draft_ahead"]
        assert value(ahead, "_total", outcome="hit") > hits, "sampled rounds used drafts made ahead too"
