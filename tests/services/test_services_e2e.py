"""The three services as real processes on loopback: same output as in-process, failures lose nothing."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from e2e_requests import (
    MAX_TOKENS,
    PROMPTS,
    assert_seeded_samples_are_plain_decoding_s,
    ended_requests,
    generate,
    generate_concurrently,
    greedy_request,
    plain_greedy_tokens,
    token_ids,
)
from grpc_health.v1 import health_pb2
from service_stack import free_port, health_status, running_stack, start_service, wait_for

from splitspec import LLM, SamplingParams
from splitspec.entrypoints.client import build_request
from splitspec.rpc import wire
from splitspec_protos import splitspec_v1_pb2 as pb
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

MAX_TOKENS_LIMIT = 1000


@pytest.fixture(scope="module")
def ngram_stack(tiny_llama, tmp_path_factory):
    with running_stack(
        tiny_llama,
        tmp_path_factory.mktemp("ngram_logs"),
        method="ngram",
        k=3,
        # adaptive K may draft nothing (these tests must see drafts); a max_tokens limit to refuse above
        gateway_args=("--fixed-k", "--max-tokens-limit", str(MAX_TOKENS_LIMIT)),
        metrics=True,
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def draft_stack(tiny_llama, tiny_drafts, tmp_path_factory):
    with running_stack(
        tiny_llama,
        tmp_path_factory.mktemp("draft_logs"),
        method="draft_model",
        k=3,
        draft_model=tiny_drafts["llama"],
        gateway_args=("--fixed-k",),  # every round drafts: the test must see drafts accepted
    ) as stack:
        yield stack


def generate_all_concurrently(address: str, requests: list[pb.GenerateRequest]) -> list[list[pb.GenerateResponse]]:
    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda req: generate(address, req), requests))


def test_greedy_through_gateway_equals_in_process_and_plain_ngram(ngram_stack, tiny_llama, plain_greedy):
    streams = generate_all_concurrently(ngram_stack.gateway.address, [greedy_request(p) for p in PROMPTS])
    spec = {"method": "ngram", "num_speculative_tokens": 3, "adaptive": False}
    in_process = LLM(str(tiny_llama), speculative_config=spec).generate(
        [{"prompt_token_ids": p} for p in PROMPTS],
        SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True),
        use_tqdm=False,
    )
    assert [token_ids(s) for s in streams] == [o.outputs[0].token_ids for o in in_process] == plain_greedy
    drafted = sum(s[-1].speculation.num_draft_tokens for s in streams)
    accepted = sum(s[-1].speculation.num_accepted_tokens for s in streams)
    assert 0 < accepted < drafted, "the comparison must cover accepted and rejected drafts"


def test_greedy_through_gateway_equals_plain_draft_model(draft_stack, plain_greedy):
    responses = [generate(draft_stack.gateway.address, greedy_request(p)) for p in PROMPTS]
    got = generate_concurrently(draft_stack.gateway.address, [greedy_request(p) for p in PROMPTS])
    assert got == plain_greedy == [token_ids(r) for r in responses]
    stats = [r[-1].speculation for r in responses]  # the noisy drafter is right on some prompts, not on each
    assert sum(s.num_draft_tokens for s in stats) > 0 and sum(s.num_accepted_tokens for s in stats) > 0


@pytest.mark.parametrize("stack_name, spec_of", [("ngram_stack", "ngram"), ("draft_stack", "draft_model")])
def test_seeded_sampling_through_gateway_equals_in_process(stack_name, spec_of, request, tiny_llama, tiny_drafts):
    stack = request.getfixturevalue(stack_name)
    spec = {"method": spec_of, "num_speculative_tokens": 3}
    if spec_of == "draft_model":
        spec["model"] = str(tiny_drafts["llama"])
    seeds = [11, 12, 13, 14]
    sampled = [
        build_request(p, temperature=0.8, top_p=0.95, max_tokens=MAX_TOKENS, ignore_eos=True, seed=s)
        for p, s in zip(PROMPTS, seeds)
    ]
    got = generate_concurrently(stack.gateway.address, sampled)
    params = [
        SamplingParams(temperature=0.8, top_p=0.95, max_tokens=MAX_TOKENS, ignore_eos=True, seed=s) for s in seeds
    ]
    expected = LLM(str(tiny_llama), speculative_config=spec).generate(
        [{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False
    )
    assert got == [o.outputs[0].token_ids for o in expected]


@pytest.mark.parametrize("stack_name", ["ngram_stack", "draft_stack"])
def test_min_tokens_through_the_gateway_is_plain_decoding_s(stack_name, request, tiny_llama, eos_case):
    """EOS waits for min_tokens: the gateway sends the ban with the sequence, the verifier applies it at
    every row of its passes."""
    address = request.getfixturevalue(stack_name).gateway.address
    prompt, ignoring_eos = eos_case
    at = ignoring_eos.index(2)  # the tiny checkpoints' EOS
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, min_tokens=at + 3)
    plain = LLM(str(tiny_llama)).generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0]
    assert len(plain.outputs[0].token_ids) > at + 1  # without the ban EOS would end it at `at`
    held = build_request(prompt, temperature=0, max_tokens=MAX_TOKENS, min_tokens=at + 3)
    assert token_ids(generate(address, held)) == plain.outputs[0].token_ids
    early = build_request(prompt, temperature=0, max_tokens=MAX_TOKENS)
    assert token_ids(generate(address, early)) == ignoring_eos[: at + 1]


@pytest.mark.parametrize("stack_name, spec_of", [("ngram_stack", "ngram"), ("draft_stack", "draft_model")])
def test_penalties_through_the_gateway_are_in_process_output(
    stack_name, spec_of, request, tiny_llama, tiny_drafts, plain_greedy
):
    """The gateway sends the penalties and the prompt's length with the sequence; the verifier counts
    the output and the drafts before each row: greedy output is plain decoding's with penalties, seeded
    output in-process speculation's with the same drafter."""
    address = request.getfixturevalue(stack_name).gateway.address
    penalties = {"presence_penalty": 1.5, "frequency_penalty": 0.5, "repetition_penalty": 1.3}
    spec = {"method": spec_of, "num_speculative_tokens": 3, "adaptive": False}
    if spec_of == "draft_model":
        spec["model"] = str(tiny_drafts["llama"])
    greedy = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, **penalties)
    seeded = SamplingParams(temperature=0.8, max_tokens=MAX_TOKENS, ignore_eos=True, seed=7, **penalties)
    for params, llm in ((greedy, LLM(str(tiny_llama))), (seeded, LLM(str(tiny_llama), speculative_config=spec))):
        outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
        expected = [o.outputs[0].token_ids for o in outputs]
        got = [
            token_ids(generate(address, build_request(p, temperature=params.temperature, max_tokens=MAX_TOKENS,
                                                      ignore_eos=True, seed=params.seed, **penalties)))
            for p in PROMPTS
        ]  # fmt: skip
        assert got == expected
        if params.greedy:
            assert expected != plain_greedy  # the penalties change the output


@pytest.mark.parametrize("stack_name", ["ngram_stack", "draft_stack"])
def test_logprobs_through_the_gateway_are_in_process_logprobs(stack_name, request, tiny_llama, plain_greedy):
    """Each token's, from the verify pass that committed it, carried by the verifier and the gateway."""
    address = request.getfixturevalue(stack_name).gateway.address
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=2, prompt_logprobs=1)
    expected = LLM(str(tiny_llama)).generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    for prompt, want, plain in zip(PROMPTS, expected, plain_greedy):
        responses = generate(address, greedy_request(prompt, logprobs=2, prompt_logprobs=1))
        assert token_ids(responses) == plain
        got = wire.logprobs_from_proto([lp for r in responses for lp in r.logprobs])
        assert len(got) == len(plain)
        _assert_same_logprobs(got, want.outputs[0].logprobs)
        # the prompt's, in the first response only (the first pass scored the prompt)
        assert not any(r.prompt_logprobs for r in responses[1:])
        _assert_same_logprobs(wire.logprobs_from_proto(responses[0].prompt_logprobs), want.prompt_logprobs[1:])


def _assert_same_logprobs(got: list, want: list) -> None:
    assert len(got) == len(want)
    for position, (a, b) in enumerate(zip(got, want)):
        assert list(a) == list(b), position
        assert [x.rank for x in a.values()] == [x.rank for x in b.values()], position
        assert [x.logprob for x in a.values()] == pytest.approx([x.logprob for x in b.values()], abs=1e-4)


def test_a_prompt_past_the_context_runs_from_its_last_tokens_with_truncate_prompt_tokens(ngram_stack, tiny_llama):
    long_prompt = [3 + i % 250 for i in range(700)]  # past the tiny model's context
    with pytest.raises(grpc.RpcError) as err:
        generate(ngram_stack.gateway.address, greedy_request(long_prompt))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    tail = plain_greedy_tokens(tiny_llama, long_prompt[-30:], MAX_TOKENS)
    got = generate(ngram_stack.gateway.address, greedy_request(long_prompt, truncate_prompt_tokens=30))
    assert token_ids(got) == tail
    assert got[-1].usage.prompt_tokens == 30


def test_any_int64_seed_through_the_gateway_is_the_same_seed_in_process(ngram_stack, tiny_llama):
    assert_seeded_samples_are_plain_decoding_s(ngram_stack.gateway.address, tiny_llama, [-1, -(2**63), 2**63 - 1, -7])


def test_speculation_override_zero_gives_the_same_tokens_without_drafts(ngram_stack, plain_greedy):
    responses = generate(ngram_stack.gateway.address, greedy_request(PROMPTS[0], num_speculative_tokens=0))
    assert token_ids(responses) == plain_greedy[0]
    assert responses[-1].speculation.num_draft_tokens == 0
    assert responses[-1].finish_reason == "length" and responses[-1].usage.completion_tokens == MAX_TOKENS


def test_cancelled_stream_frees_every_kv_block(ngram_stack):
    """The cancel reaches the gateway, which ends the request there (its own count, not the client's
    status, which the client sets itself) and releases the sequence: the verifier frees its blocks."""
    # measured once the earlier tests' sequences are released: one still held would be freed later and
    # leave more blocks free than at the start
    assert wait_for(lambda: ngram_stack.verifier_info().num_sequences == 0)
    initial = ngram_stack.verifier_info()
    cancelled, finished = ended_requests(ngram_stack.gateway)
    with grpc.insecure_channel(ngram_stack.gateway.address) as channel:
        request = greedy_request(PROMPTS[2], max_tokens=MAX_TOKENS_LIMIT)
        call = pb_grpc.GatewayStub(channel).Generate(request, timeout=60)
        first = next(call)
        assert first.token_ids
        assert ngram_stack.verifier_info().num_free_blocks < initial.num_free_blocks
        call.cancel()
        assert call.code() == grpc.StatusCode.CANCELLED
    assert wait_for(lambda: ended_requests(ngram_stack.gateway) == (cancelled + 1, finished)), (
        "the gateway counted the request cancelled, not finished",
        ended_requests(ngram_stack.gateway),
        (cancelled, finished),
    )
    assert wait_for(lambda: ngram_stack.verifier_info().num_free_blocks == initial.num_free_blocks)
    assert ngram_stack.verifier_info().num_sequences == 0


def test_requests_cancelled_at_any_early_moment_leave_nothing_on_the_verifier(ngram_stack):
    """Cancelled while the gateway is still starting the sequence on the verifier: the start may
    already be on the wire, so the gateway must release it anyway."""
    initial = ngram_stack.verifier_info()

    def cancel_after(delay_s: float) -> None:
        with grpc.insecure_channel(ngram_stack.gateway.address) as channel:
            call = pb_grpc.GatewayStub(channel).Generate(greedy_request(PROMPTS[2], max_tokens=400), timeout=60)
            time.sleep(delay_s)
            call.cancel()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(cancel_after, [i % 20 * 0.0005 for i in range(160)]))

    def nothing_held() -> bool:
        # a release drops the sequence at once and frees its blocks after the pass in flight
        info = ngram_stack.verifier_info()
        return info.num_sequences == 0 and info.num_free_blocks == initial.num_free_blocks

    assert wait_for(nothing_held), ngram_stack.verifier_info()


def test_a_request_past_its_deadline_ends_there_and_frees_every_kv_block(ngram_stack):
    initial = ngram_stack.verifier_info()
    with grpc.insecure_channel(ngram_stack.gateway.address) as channel:
        started = time.monotonic()
        call = pb_grpc.GatewayStub(channel).Generate(greedy_request(PROMPTS[2], max_tokens=1000), timeout=0.5)
        received = []
        with pytest.raises(grpc.RpcError) as err:
            for response in call:
                received += response.token_ids
        # the client ends the call at its deadline itself; what the servers do is below (blocks freed)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started < 10
        assert 0 < len(received) < 1000, "the deadline struck mid-stream"
    assert wait_for(lambda: ngram_stack.verifier_info().num_free_blocks == initial.num_free_blocks)
    assert ngram_stack.verifier_info().num_sequences == 0


def test_a_frozen_gateway_s_sequences_are_freed_at_their_client_s_deadline(tiny_llama, tmp_path):
    """The verifier and the proposer hear of the client's deadline and release the sequence there
    themselves: the gateway, stopped mid-request, never sends the release, and its streams stay open."""
    from metrics_scrape import scrape, value

    metrics_port = free_port()
    proposer_args = ("--metrics-port", str(metrics_port))
    with running_stack(tiny_llama, tmp_path, proposer_args=proposer_args, gateway_args=("--fixed-k",)) as stack:
        initial = stack.verifier_info()
        proposer_sequences = lambda: value(scrape(metrics_port)["splitspec_proposer_sequences"])  # noqa: E731
        with grpc.insecure_channel(stack.gateway.address) as channel:
            call = pb_grpc.GatewayStub(channel).Generate(greedy_request(PROMPTS[2], max_tokens=1000), timeout=2.0)
            for _ in range(3):  # drafted rounds: the proposer holds the sequence too
                next(call)
            stack.gateway.proc.send_signal(signal.SIGSTOP)
            try:
                assert stack.verifier_info().num_sequences == 1 and proposer_sequences() == 1
                with pytest.raises(grpc.RpcError) as err:
                    list(call)
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert wait_for(lambda: stack.verifier_info().num_sequences == 0, 5)
                assert wait_for(lambda: stack.verifier_info().num_free_blocks == initial.num_free_blocks, 5)
                assert wait_for(lambda: proposer_sequences() == 0, 5)
            finally:
                stack.gateway.proc.send_signal(signal.SIGCONT)


@pytest.mark.parametrize(
    "request_kwargs, code",
    [
        (dict(prompt=""), grpc.StatusCode.INVALID_ARGUMENT),
        (dict(prompt="hello", prompt_token_ids=[1, 2]), grpc.StatusCode.INVALID_ARGUMENT),
        (
            dict(prompt_token_ids=[1, 2], sampling=pb.SamplingParameters(temperature=-0.5)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            dict(prompt_token_ids=[1, 2], sampling=pb.SamplingParameters(temperature=float("nan"))),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (dict(prompt_token_ids=[1, 2], sampling=pb.SamplingParameters(top_p=0.0)), grpc.StatusCode.INVALID_ARGUMENT),
        (dict(prompt_token_ids=[1, 2], sampling=pb.SamplingParameters(top_p=1.5)), grpc.StatusCode.INVALID_ARGUMENT),
        (dict(prompt_token_ids=[1] * 600), grpc.StatusCode.INVALID_ARGUMENT),
        (dict(prompt_token_ids=[100000]), grpc.StatusCode.INVALID_ARGUMENT),
        (
            dict(prompt_token_ids=[1, 2], sampling=pb.SamplingParameters(max_tokens=MAX_TOKENS_LIMIT + 1)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),  # fmt: skip
        (
            dict(prompt_token_ids=[1, 2], sampling=pb.SamplingParameters(stop=["x"] * 17)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            dict(prompt_token_ids=[1, 2], sampling=pb.SamplingParameters(max_tokens=4, min_tokens=5)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            dict(prompt_token_ids=[1, 2], sampling=pb.SamplingParameters(presence_penalty=2.5)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            dict(prompt_token_ids=[1, 2], sampling=pb.SamplingParameters(repetition_penalty=0.0)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        # the tiny checkpoint has no tokenizer, so no chat template
        (dict(messages=[pb.ChatMessage(role="user", content="hi")]), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_bad_input_is_refused_and_the_server_keeps_serving(ngram_stack, plain_greedy, request_kwargs, code):
    with pytest.raises(grpc.RpcError) as err:
        generate(ngram_stack.gateway.address, pb.GenerateRequest(**request_kwargs))
    assert err.value.code() == code and err.value.details()
    assert token_ids(generate(ngram_stack.gateway.address, greedy_request(PROMPTS[1]))) == plain_greedy[1]


def test_unknown_speculation_override_is_invalid_argument(ngram_stack):
    request = greedy_request(PROMPTS[1])
    request.speculation.update({"num_speculative_tokenz": 3})
    with pytest.raises(grpc.RpcError) as err:
        generate(ngram_stack.gateway.address, request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "num_speculative_tokenz" in err.value.details()


def test_generic_reflection_client_can_call_the_gateway(ngram_stack, plain_greedy):
    from grpc_requests import Client

    client = Client.get_by_endpoint(ngram_stack.gateway.address)
    assert "splitspec.v1.Gateway" in client.service_names
    result = client.request(
        "splitspec.v1.Gateway",
        "GenerateUnary",
        {"prompt_token_ids": PROMPTS[0], "sampling": {"temperature": 0, "max_tokens": MAX_TOKENS, "ignore_eos": True}},
    )
    assert [int(t) for t in result["token_ids"]] == plain_greedy[0]
    assert result["finish_reason"] == "length"


def test_killing_the_proposer_mid_generation_loses_no_output(tiny_llama, tiny_drafts, tmp_path):
    """A draft model with K pinned drafts every round, so a draftless round (but the last, which has
    no room for drafts) can only come from the gateway verifying alone after the proposer died."""
    max_tokens = 300
    plain = plain_greedy_tokens(tiny_llama, PROMPTS[0], max_tokens)
    with running_stack(
        tiny_llama, tmp_path, method="draft_model", k=3, draft_model=tiny_drafts["llama"], gateway_args=("--fixed-k",)
    ) as stack:
        with grpc.insecure_channel(stack.gateway.address) as channel:
            call = pb_grpc.GatewayStub(channel).Generate(greedy_request(PROMPTS[0], max_tokens=max_tokens), timeout=120)
            before = []
            for response in call:  # until a round has accepted drafts
                before.append(response)
                if len(response.token_ids) > 1:
                    break
            assert len(before[-1].token_ids) > 1 and not before[-1].finish_reason, "drafts were in use"
            stack.proposers[0].stop(signal.SIGKILL)
            after = list(call)
    received = token_ids(before) + token_ids(after)
    assert received == plain
    stats = after[-1].speculation
    draftless_rounds = stats.num_rounds - stats.drafted_per_position[0]
    assert draftless_rounds >= 2, "rounds ran after the kill, verified without drafts"
    assert after[-1].finish_reason == "length" and after[-1].usage.completion_tokens == max_tokens


def test_full_verifier_answers_resource_exhausted(tiny_llama, tmp_path):
    with running_stack(tiny_llama, tmp_path, verifier_args=("--max-num-seqs", "1")) as stack:
        with grpc.insecure_channel(stack.gateway.address) as channel:
            long_call = pb_grpc.GatewayStub(channel).Generate(greedy_request(PROMPTS[0], max_tokens=400), timeout=60)
            next(long_call)
            with pytest.raises(grpc.RpcError) as err:
                generate(stack.gateway.address, greedy_request(PROMPTS[1]))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            long_call.cancel()


def test_gateway_without_a_reachable_verifier_is_not_serving_and_unavailable(tiny_llama, tmp_path):
    dead = f"127.0.0.1:{free_port()}"
    gateway = start_service(
        "gateway",
        ["serve-gateway", "--model", str(tiny_llama), "--verifiers", dead, "--proposers", ""],
        tmp_path,
        wait=False,
    )
    try:
        assert wait_for(lambda: health_status(gateway.address) == health_pb2.HealthCheckResponse.NOT_SERVING, 60)
        with pytest.raises(grpc.RpcError) as err:
            generate(gateway.address, greedy_request(PROMPTS[1]))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        gateway.stop()


def test_sigterm_drains_an_in_flight_stream(tiny_llama, tmp_path):
    """One token per round (speculation off for the request), each round crossing a 1 ms link to the
    verifier and back, keeps the stream running for seconds: SIGTERM then refuses new calls, the stream
    in flight completes, and the gateway exits cleanly. Its grace period is long enough for the stream on
    a busy machine (the default 10 s is not, with other tests beside it)."""
    max_tokens = 480
    plain = plain_greedy_tokens(tiny_llama, PROMPTS[0], max_tokens)
    with running_stack(tiny_llama, tmp_path, network_delay_ms=1, gateway_args=("--grace-seconds", "60")) as stack:
        with grpc.insecure_channel(stack.gateway.address) as channel:
            slow = greedy_request(PROMPTS[0], max_tokens=max_tokens, num_speculative_tokens=0)
            call = pb_grpc.GatewayStub(channel).Generate(slow, timeout=60)
            received = list(next(call).token_ids)
            stack.gateway.proc.send_signal(signal.SIGTERM)
            assert wait_for(lambda: health_status(stack.gateway.address) != health_pb2.HealthCheckResponse.SERVING)
            with pytest.raises(grpc.RpcError) as refused:
                generate(stack.gateway.address, greedy_request(PROMPTS[1]), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert stack.gateway.proc.poll() is None, "the gateway waits for the stream in flight"
            responses = list(call)
        received += token_ids(responses)
        assert received == plain
        assert responses[-1].finish_reason == "length"
        assert stack.gateway.proc.wait(timeout=30) == 0


def test_sequences_spread_over_verifiers_and_survive_losing_one_of_two_proposers(tiny_llama, tmp_path, plain_greedy):
    """Two long streams, one per verifier; the proposer holding sequences is killed while they run. They
    end as plain decoding does, and drafts are accepted after it died (the other proposer's)."""
    from contextlib import ExitStack

    from metrics_scrape import accepted_in, drafts_served, scrape, value

    long_tokens = 300
    expected = [plain_greedy_tokens(tiny_llama, PROMPTS[i], long_tokens) for i in range(2)]
    with ExitStack() as cleanup:
        verifiers = [
            start_service(f"verifier{i}", ["serve-verifier", "--model", str(tiny_llama)], tmp_path) for i in range(2)
        ]
        proposers = [
            start_service(f"proposer{i}", ["serve-proposer", "-k", "3"], tmp_path, metrics=True) for i in range(2)
        ]
        for service in verifiers + proposers:
            cleanup.callback(service.stop)
        gateway = start_service(
            "gateway",
            [
                "serve-gateway",
                "--model",
                str(tiny_llama),
                "-k",
                "3",
                "--verifiers",
                ",".join(v.address for v in verifiers),
                "--proposers",
                ",".join(p.address for p in proposers),
                "--ngram-on-proposers",
                "--fixed-k",  # adaptive K may stop drafting on this tiny model: no round would show the drafter
            ],
            tmp_path,
            metrics=True,
        )
        cleanup.callback(gateway.stop)
        channel = grpc.insecure_channel(gateway.address)
        cleanup.callback(channel.close)
        stub = pb_grpc.GatewayStub(channel)
        calls = [stub.Generate(greedy_request(PROMPTS[i], max_tokens=long_tokens), timeout=60) for i in range(2)]
        received = [list(next(call).token_ids) for call in calls]
        after_kill: list = []

        def sequences(address: str) -> int:
            with grpc.insecure_channel(address) as c:
                return pb_grpc.VerifierStub(c).GetInfo(pb.InfoRequest(), timeout=5).num_sequences

        def held(proposer) -> float:
            return value(scrape(proposer.metrics_port)["splitspec_proposer_sequences"])

        assert sorted(sequences(v.address) for v in verifiers) == [1, 1]
        victim = next(p for p in proposers if held(p) > 0)
        (survivor,) = (p for p in proposers if p is not victim)
        victim.stop(signal.SIGKILL)
        served_at_kill = drafts_served(survivor.metrics_port)
        for call, tokens in zip(calls, received):
            responses = list(call)
            after_kill += responses
            tokens += token_ids(responses)
        assert [len(t) for t in received] == [long_tokens] * 2
        assert received == expected
        assert drafts_served(survivor.metrics_port) > served_at_kill, "the other proposer drafted for them"
        assert accepted_in(after_kill) > 0, "drafts were accepted after the proposer died"
        got = generate_concurrently(gateway.address, [greedy_request(p) for p in PROMPTS])
        assert got == plain_greedy
