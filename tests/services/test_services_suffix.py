"""Suffix decoding through the services: each proposer pod remembers the outputs it served, the gateway
brings a repeated request back to the pod that remembers it, and output stays the target's own."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from e2e_requests import PROMPTS, assert_seeded_samples_are_plain_decoding_s, generate, token_ids
from service_stack import running_stack

from gateway_svc.proposer_affinity import affinity_key, pick_pod
from splitspec import LLM, SamplingParams
from splitspec.entrypoints.client import build_request

pytestmark = pytest.mark.e2e

MAX_TOKENS = 48


@pytest.fixture(scope="module")
def suffix_stack(tiny_llama, tmp_path_factory):
    with running_stack(
        tiny_llama,
        tmp_path_factory.mktemp("suffix_logs"),
        method="suffix",
        k=16,
        num_proposers=2,
        # the rounds counted below are the drafter's: adaptive K prices drafts by measured pass times, and
        # on a loaded machine it cuts drafts the pod's memory would have made
        gateway_args=("--fixed-k",),
    ) as stack:
        yield stack


def test_repeated_requests_are_drafted_from_the_pod_s_memory_and_equal_in_process_output(suffix_stack, tiny_llama):
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    own = [o.outputs[0].token_ids for o in LLM(str(tiny_llama)).generate(
        [{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)]  # fmt: skip
    requests = [build_request(p, temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True) for p in PROMPTS]
    # one at a time: run at once, a request whose pod is busier than the load bound allows goes to the
    # other pod (proposer_affinity), and its repeat, alone, back to the pod that never saw its answer
    first = [generate(suffix_stack.gateway.address, r) for r in requests]
    again = [generate(suffix_stack.gateway.address, r) for r in requests]
    assert [token_ids(r) for r in first] == own
    assert [token_ids(r) for r in again] == own
    # with two pods, each repeat finds its answer only on the pod that served it first; the first time,
    # with nothing remembered, is the control: what the request's own text alone lets the drafter accept
    for before, responses in zip(first, again):
        control, spec = before[-1].speculation, responses[-1].speculation
        assert spec.num_accepted_tokens >= 0.75 * MAX_TOKENS and spec.num_rounds <= 10, spec
        assert control.num_accepted_tokens <= 0.5 * MAX_TOKENS and control.num_rounds >= 2 * spec.num_rounds, control


def test_seeded_sampling_through_the_services_is_plain_decoding_s(suffix_stack, tiny_llama):
    for _ in range(2):  # the second time, the pods hold the first time's samples
        assert_seeded_samples_are_plain_decoding_s(suffix_stack.gateway.address, tiny_llama, [31, 32, 33, 34])


SESSION_PROMPTS = [[11 + 7 * i + 3 * j for j in range(12)] for i in range(4)]


def _session_on_another_pod(stack, session: str) -> str:
    """A session id that the gateway's rendezvous hashing places on a different pod than `session`."""
    pods = [SimpleNamespace(address=p.address, num_sequences=0) for p in stack.proposers]
    home = pick_pod(pods, affinity_key(session, []))
    return next(
        other
        for other in (f"{session}-elsewhere-{n}" for n in range(1000))
        if pick_pod(pods, affinity_key(other, [])) is not home
    )


def test_a_session_id_brings_another_prompt_to_the_pod_that_served_the_session(suffix_stack):
    """A continues a prompt; B asks for the rest of A's answer behind a prompt that ends otherwise (A's
    prompt and the start of A's answer). Only the session brings B to the pod that remembers A's answer:
    the control, B under a session the gateway places on the other pod, drafts from its own text alone."""
    address = suffix_stack.gateway.address
    for i, prompt in enumerate(SESSION_PROMPTS):
        session = f"session-{i}"
        answer = token_ids(generate(address, build_request(prompt, temperature=0, max_tokens=MAX_TOKENS,
                                                           ignore_eos=True, session_id=session)))  # fmt: skip
        request = build_request(prompt + answer[:8], temperature=0, max_tokens=MAX_TOKENS - 8, ignore_eos=True,
                                session_id=session)  # fmt: skip
        responses = generate(address, request)
        assert token_ids(responses) == answer[8:]
        spec = responses[-1].speculation
        assert spec.num_accepted_tokens >= 0.75 * (MAX_TOKENS - 8), (session, spec)
        elsewhere = _session_on_another_pod(suffix_stack, session)
        request.session_id = elsewhere
        control = generate(address, request)
        assert token_ids(control) == answer[8:]
        assert control[-1].speculation.num_accepted_tokens <= 0.5 * (MAX_TOKENS - 8), (
            elsewhere,
            control[-1].speculation,
        )
