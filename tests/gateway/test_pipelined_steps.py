"""Pipelined steps (VerifyStep.pipelined): the gateway keeps several steps in flight and the verifier
runs them back to back, so no round waits for the link. Rounds that need nothing from a proposer are
pipelined as they are; with a proposer, each draft made ahead is sent at once, assuming the outcome of
the steps before (VerifyStep.assumed_token_ids).

The loop tests drive GatewayCore.generate against scripted verifiers that commit a fixed function of
the context, and test_draft_ahead's scripted proposer; the service test puts a slow link between a
real gateway and verifier.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest
from gateway_fakes import K, ScriptedProposer, drafter_continuation, target_next, target_output, verify_greedily
from verifier_stand_in import VerifierStandIn

from gateway_svc.ahead_pipeline import Prediction
from gateway_svc.draft_ahead import AheadDraft
from gateway_svc.drafter_pool import DrafterPool
from gateway_svc.generation import GatewayCore
from gateway_svc.round_plan import RoundSettings
from splitspec.drafter_traits import DrafterTraits
from splitspec.drafts import Draft
from splitspec.sampling_params import SamplingParams
from splitspec_protos import splitspec_v1_pb2 as pb

PROMPT = [3, 1, 4, 1, 5]
MAX_TOKENS = 40


@dataclass
class PipelinedVerifier(VerifierStandIn):
    """Commits 1 to 3 target tokens a step, one step at a time in arrival order (as the service's
    per-sequence turn does), and counts how many of a sequence's steps were in flight at once."""

    tokens: list[int] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    steps: int = 0
    misreport_at: int | None = None  # the step whose result names a length it did not build on
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def start(self, seq_id: str, token_ids: list[int], *args) -> None:
        self.tokens = list(token_ids)

    async def step(
        self, seq_id, committed_len, draft, local=None, pipelined=False, remote=None, every_draft=False
    ) -> pb.StepResult:
        assert pipelined and not draft.token_ids and committed_len <= len(self.tokens)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            async with self.turn:
                await asyncio.sleep(0.002)  # the pass
                built_on, self.steps = len(self.tokens), self.steps + 1
                for _ in range(1 + len(self.tokens) % 3):
                    self.tokens.append(target_next(self.tokens))
                reported = built_on + 1 if self.steps == self.misreport_at else built_on
                return pb.StepResult(committed_len=reported, token_ids=self.tokens[built_on:])
        finally:
            self.in_flight -= 1


def run(verifiers: list[PipelinedVerifier], num_speculative_tokens: int = 0) -> list[int]:
    core = GatewayCore(verifiers, [], None, set(), max_model_len=1 << 20)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)

    async def collect() -> list[int]:
        stream = core.generate(None, PROMPT, params, num_speculative_tokens)
        return [t async for delta in stream for t in delta.token_ids]

    return asyncio.run(collect())


def test_steps_that_need_no_proposer_are_in_flight_together_and_output_is_the_target_s():
    verifier = PipelinedVerifier()
    assert run([verifier]) == target_output(PROMPT, MAX_TOKENS)
    assert verifier.most_in_flight == 2, "one step verified, the next already waiting at the verifier"


def test_no_more_steps_are_sent_than_the_request_may_still_need():
    verifier = PipelinedVerifier()
    out = run([verifier])
    assert len(out) == MAX_TOKENS
    committed_past_the_end = len(verifier.tokens) - len(PROMPT) - MAX_TOKENS
    assert committed_past_the_end <= 2 * 3, "at most the steps in flight when the last token arrived"


def test_a_result_built_on_another_length_is_never_applied():
    """The verifier says it built a step on a length the gateway did not commit: the gateway takes it as
    lost, starts the sequence again on another verifier from what it holds, and loses nothing."""
    liar, other = PipelinedVerifier(misreport_at=4), PipelinedVerifier()
    assert run([liar, other]) == target_output(PROMPT, MAX_TOKENS)
    assert other.steps > 0, "the sequence moved"


@dataclass
class AssumingVerifier(VerifierStandIn):
    """The service's rule for pipelined steps against the greedy target: a step's drafts
    are verified only if the steps before committed exactly the tokens it assumed, and then they must be
    the drafter's continuation of exactly that context (a draft for another outcome would differ)."""

    tokens: list[int] = field(default_factory=list)
    verified: list[list[int]] = field(default_factory=list)
    dropped: int = 0
    in_flight: int = 0
    most_in_flight: int = 0
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def start(self, seq_id: str, token_ids: list[int], *args) -> None:
        self.tokens = list(token_ids)

    async def step(
        self, seq_id, committed_len, draft, local=None, pipelined=False, assumed=None, remote=None, every_draft=False
    ):
        assert pipelined and committed_len <= len(self.tokens)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            async with self.turn:
                await asyncio.sleep(0.002)  # the pass
                drafts = list(draft.token_ids)
                if self.tokens[committed_len:] != list(assumed or []):
                    self.dropped += 1 if drafts else 0
                    drafts = []
                assert drafts == drafter_continuation(self.tokens, len(drafts)), "a draft for another context"
                self.verified.append(drafts)
                built_on = len(self.tokens)
                num_accepted, committed = verify_greedily(self.tokens, drafts)
                self.tokens += committed
                return pb.StepResult(
                    committed_len=built_on, num_accepted=num_accepted, token_ids=committed, num_drafted=len(drafts)
                )
        finally:
            self.in_flight -= 1


def run_drafted(proposer) -> tuple[list[int], AssumingVerifier]:
    verifier = AssumingVerifier()
    core = GatewayCore(
        [verifier], [proposer], None, set(), max_model_len=1 << 20,
        rounds=RoundSettings(num_speculative_tokens=K, verifier_ngram=False), drafters=DrafterPool(traits=DrafterTraits("draft_model", K, 128)),
    )  # fmt: skip
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)

    async def collect() -> list[int]:
        return [t async for delta in core.generate(None, PROMPT, params, K) for t in delta.token_ids]

    return asyncio.run(collect()), verifier


def test_drafts_made_ahead_reach_the_verifier_before_the_outcome_they_assume():
    """Each draft made ahead is sent at once as the next step: the verifier runs it when the step before
    returns, verifies its drafts only if that step committed what was assumed, and the output is the
    target's either way."""
    proposer = ScriptedProposer()
    output, verifier = run_drafted(proposer)
    assert output == target_output(PROMPT, MAX_TOKENS)
    assert verifier.most_in_flight == 2, "the next step was at the verifier while one was verified"
    verified_ahead = sum(1 for d in verifier.verified if d) - proposer.fresh_calls
    assert verified_ahead > 0, "some steps verified drafts made ahead"
    assert verifier.dropped > 0, "some assumed an outcome that did not happen and verified nothing"


def test_a_proposer_lost_while_drafting_ahead_of_pipelined_steps_loses_nothing():
    proposer = ScriptedProposer(fail_ahead_from=2)
    output, verifier = run_drafted(proposer)
    assert output == target_output(PROMPT, MAX_TOKENS)
    assert not proposer.available and verifier.verified[-1] == [], "later steps verified no drafts"


def test_the_prediction_follows_the_steps_in_flight_until_one_commits_something_else():
    prediction = Prediction()
    prediction.sent([], Draft([10, 11], [None, None]))
    prediction.sent([10, 11, 12], Draft([13, 14], [None, None]))  # the draft ahead guessed 12
    assert prediction.tail == [10, 11, 12, 13, 14]
    prediction.committed([10, 11, 12], steps_left=1)
    assert prediction.tail == [13, 14]
    prediction.committed([13, 20], steps_left=1)  # a rejection: what the next step commits is unknown
    assert prediction.tail is None
    prediction.committed([30], steps_left=0)
    assert prediction.tail == []


@pytest.mark.parametrize(
    "assumed, tokens, committed_since, tail, in_flight, expected",
    [
        # made after the step in flight: it assumes that step's draft and the guess
        ([10, 11], [12, 13, 14], [], [10, 11], 1, [10, 11, 12]),
        # made after two steps; the first has committed what was expected
        ([10, 11, 12, 13], [14, 15], [10, 11, 12], [13], 1, [13, 14]),
        # nothing in flight any more, and the guess is the token committed
        ([10, 11], [12, 13, 14], [10, 11, 12], [], 0, []),
        # nothing in flight, and another token than the guess committed
        ([10, 11], [12, 13, 14], [10, 11, 19], [], 0, None),
        # a step committed something else than expected
        ([10, 11], [12, 13, 14], [10, 20], None, 1, None),
        # made after another outcome than the one expected now
        ([10, 11], [12, 13, 14], [], [10, 11, 12, 13], 2, None),
        # nothing drafted after the guess
        ([10, 11], [12], [], [10, 11], 1, None),
    ],
)
def test_a_draft_ahead_is_sent_only_where_it_continues_the_expected_outcome(
    assumed, tokens, committed_since, tail, in_flight, expected
):
    reply = AheadDraft(assumed, Draft(tokens, [None] * len(tokens)), base_len=7)
    assert Prediction(tail).assumed_for(reply, committed_since, in_flight) == expected


@pytest.mark.e2e
@pytest.mark.slow
def test_pipelining_hides_a_slow_link_to_the_verifier(tiny_llama, tmp_path):
    """20 ms each way between the gateway and the verifier, and a pass of the tiny model takes a few: one
    step at a time, every round waits 40 ms; pipelined, several rounds share each wait. Output is the
    same."""
    from e2e_requests import generate, greedy_request, token_ids
    from service_stack import running_stack

    from splitspec import LLM

    prompt = [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6, 7]
    max_tokens = 48
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    plain = LLM(str(tiny_llama)).generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0].outputs[0]
    seconds = {}
    for pipeline in (True, False):
        flags = ("--fixed-k",) + (() if pipeline else ("--no-pipeline",))
        with running_stack(
            tiny_llama, tmp_path, k=3, gateway_args=flags, network_delay_ms=20, ngram_on_proposers=False
        ) as stack:
            generate(stack.gateway.address, greedy_request(prompt, max_tokens=4))  # links measured, warm
            started = time.monotonic()
            out = token_ids(generate(stack.gateway.address, greedy_request(prompt, max_tokens=max_tokens)))
            seconds[pipeline] = time.monotonic() - started
        assert out == plain.token_ids
    assert seconds[True] < 0.6 * seconds[False], seconds
