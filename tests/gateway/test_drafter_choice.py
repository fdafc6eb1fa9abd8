"""The measured choice between the verifier's own n-gram drafts and the proposer's (gateway_svc.drafter_choice).

The loop tests drive GatewayCore.generate against a scripted verifier that drafts "n-grams" itself when
asked (a scripted lookup that always or never finds the target's continuation) and verifies a
proposer's drafts otherwise, with test_draft_ahead's scripted proposer (right but for every seventh
position). Whichever drafter drafts, the output is the target's; the tests check which one the request
ends up on, and that it moved only when the measurements said so.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from e2e_requests import GREEDY, _seeded, _seeded_in_process, generate_concurrently, greedy_request
from e2e_requests import PROMPTS as PROMPTS_E2E
from gateway_fakes import K, ScriptedProposer, drafter_continuation, target_output, verify_greedily
from metrics_scrape import scrape, value
from service_stack import free_port, running_stack
from verifier_stand_in import VerifierStandIn

from gateway_svc.drafter_choice import DrafterChoice
from gateway_svc.drafter_pool import DrafterPool
from gateway_svc.generation import GatewayCore
from gateway_svc.round_plan import RoundSettings
from splitspec import LLM
from splitspec.adaptive_k import Ewma, PassCostModel
from splitspec.drafter_traits import DrafterTraits
from splitspec.sampling_params import SamplingParams
from splitspec_protos import splitspec_v1_pb2 as pb

PROMPT = [3, 1, 4, 1, 5]
MAX_TOKENS = 80


def perfect_lookup(context: list[int], n: int) -> list[int]:
    return target_output(context, n)


def no_lookup(context: list[int], n: int) -> list[int]:
    return []


@dataclass
class DraftingVerifier(VerifierStandIn):
    """Drafts with `lookup` when a step asks it to (local), else verifies the step's drafts (a
    pipelined step's only if the steps before committed what it assumed); records who drafted each step.
    Each pass takes the time its cost model says, so that the paces the gateway times are the modelled
    ones and not the scheduling noise of a machine."""

    lookup: object = no_lookup
    tokens: list[int] = field(default_factory=list)
    drafted_by: list[str] = field(default_factory=list)
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    cost_model: PassCostModel = field(default_factory=lambda: PassCostModel({1: 0.010, 16: 0.011}))

    async def start(self, seq_id: str, token_ids: list[int], *args) -> None:
        self.tokens = list(token_ids)

    async def step(
        self, seq_id, committed_len, draft, local=None, pipelined=False, assumed=None, remote=None, every_draft=False
    ):
        async with self.turn:
            await asyncio.sleep(0)
            built_on = len(self.tokens)
            if local is not None:
                assert not draft.token_ids
                drafts = self.lookup(self.tokens, local.num_tokens)
                self.drafted_by.append("verifier")
            else:
                drafts = list(draft.token_ids)
                if self.tokens[committed_len:] != list(assumed or []):
                    drafts = []
                assert drafts == drafter_continuation(self.tokens, len(drafts)), "a draft for another context"
                self.drafted_by.append("proposer" if drafts else "nobody")
            num_accepted, committed = verify_greedily(self.tokens, drafts)
            await asyncio.sleep(self.cost_model.cost(len(drafts) + 1))
            self.tokens += committed
            return pb.StepResult(
                committed_len=built_on, num_accepted=num_accepted, token_ids=committed, num_drafted=len(drafts)
            )


def measured(seconds: float | None) -> Ewma:
    ewma = Ewma()
    if seconds is not None:
        ewma.add(seconds)
    return ewma


@dataclass
class MeasuredProposer(ScriptedProposer):
    """The scripted proposer with the link and drafting times the gateway measures: by default none for
    the link, and a draft token at a twentieth of a pass (a small draft model), which drafting takes."""

    link: Ewma = field(default_factory=lambda: measured(None))
    draft_token: Ewma = field(default_factory=lambda: measured(0.0005))

    async def _draft(self, seq, num_tokens: int, assumed: list[int] | None) -> pb.DraftResult:
        await asyncio.sleep(num_tokens * (self.draft_token.value or 0.0))
        return await super()._draft(seq, num_tokens, assumed)


def run(
    verifier: DraftingVerifier, measure: bool = True, pipeline: bool = True, proposer: MeasuredProposer | None = None
) -> list[int]:
    core = GatewayCore(
        [verifier],
        [proposer or MeasuredProposer()],
        None,
        set(),
        max_model_len=1 << 20,
        rounds=RoundSettings(num_speculative_tokens=K, prompt_lookup=(1, 4), pipeline_steps=pipeline),
        # without measuring, an n-gram drafter: the verifiers' own n-grams draft every round
        drafters=DrafterPool(traits=DrafterTraits("draft_model" if measure else "ngram", K, 128)),
    )
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)

    async def collect() -> list[int]:
        return [t async for delta in core.generate(None, PROMPT, params, K) for t in delta.token_ids]

    return asyncio.run(collect())


@pytest.mark.parametrize("pipeline", [True, False])
def test_a_request_whose_text_never_repeats_moves_to_the_proposer(pipeline):
    verifier = DraftingVerifier(lookup=no_lookup)
    assert run(verifier, pipeline=pipeline) == target_output(PROMPT, MAX_TOKENS)
    first_remote = verifier.drafted_by.index("proposer")
    assert verifier.drafted_by[:first_remote] == ["verifier"] * first_remote
    assert first_remote >= DrafterChoice.min_rounds, "it tried the verifier's n-grams first"
    assert "verifier" not in verifier.drafted_by[first_remote:], "it stayed on the drafter that drafts"


def test_a_proposer_whose_drafting_time_is_unknown_is_priced_as_the_target_and_found_by_a_probe():
    verifier = DraftingVerifier(lookup=no_lookup)
    assert run(verifier, proposer=MeasuredProposer(draft_token=measured(None))) == target_output(PROMPT, MAX_TOKENS)
    first_remote = verifier.drafted_by.index("proposer")
    assert DrafterChoice.probe_every <= first_remote <= DrafterChoice.probe_every + 2, "moved by the probe"


@pytest.mark.parametrize("pipeline", [True, False])
def test_a_request_the_verifier_drafts_well_for_stays_on_the_verifier(pipeline):
    verifier = DraftingVerifier(lookup=perfect_lookup)
    assert run(verifier, pipeline=pipeline) == target_output(PROMPT, MAX_TOKENS)
    assert set(verifier.drafted_by) == {"verifier"}


def test_without_measuring_the_verifier_drafts_every_round():
    verifier = DraftingVerifier(lookup=no_lookup)
    assert run(verifier, measure=False) == target_output(PROMPT, MAX_TOKENS)
    assert set(verifier.drafted_by) == {"verifier"}


def test_the_choice_moves_only_after_its_minimum_rounds_and_by_its_margin():
    choice = DrafterChoice()
    values = {True: 100.0, False: 200.0}
    assert not choice.wants_other(values.get), "no move before anything is measured"
    for _ in range(choice.min_rounds):
        choice.record(asked=4, drafted=0, accepted=0)
    assert choice.wants_other(values.get)
    assert not choice.wants_other({True: 100.0, False: 105.0}.get), "within the margin: not worth a drain"
    choice.switch()
    assert not choice.uses_local and choice.rounds == 0


def test_the_other_drafter_is_tried_again_now_and_then_and_less_often_each_time():
    choice = DrafterChoice(uses_local=False)
    values = {True: 1.0, False: 100.0}
    for probe_every in (64, 128):
        assert choice.probe_every == probe_every
        for _ in range(probe_every - 1):
            choice.record(asked=4, drafted=4, accepted=4)
        assert not choice.wants_other(values.get)
        choice.record(asked=4, drafted=4, accepted=4)
        assert choice.wants_other(values.get)
        choice.switch()
        choice.switch()  # and back, as a probe that measured worse does


def test_once_both_drafters_have_run_their_realized_pace_decides_not_the_prediction():
    choice = DrafterChoice()
    prefers_remote = {True: 100.0, False: 200.0}.get
    for _ in range(choice.min_rounds):
        choice.record(asked=4, drafted=2, accepted=2)
        choice.timed(tokens=3, seconds=0.05)  # 60 tokens/s on the n-grams
    assert choice.wants_other(prefers_remote)
    choice.switch()
    for _ in range(choice.min_rounds):
        choice.record(asked=4, drafted=4, accepted=4)
        choice.timed(tokens=5, seconds=0.5)  # 10 tokens/s on the proposer: slower than its parts said
    assert choice.wants_other(prefers_remote), "back to the n-grams, which measured faster"
    choice.switch()
    for _ in range(choice.min_rounds):
        choice.record(asked=4, drafted=2, accepted=2)
        choice.timed(tokens=3, seconds=0.05)
    assert not choice.wants_other(prefers_remote), "not again until the next probe"


def test_unmatched_rounds_lower_the_match_rate_and_leave_the_acceptance_alone():
    choice = DrafterChoice()
    acceptance, matches = choice.local.rate, choice.matches.rate
    for _ in range(6):
        choice.record(asked=4, drafted=0, accepted=0)
    assert choice.local.rate == pytest.approx(acceptance, abs=0.01) and choice.matches.rate < matches / 2
    choice.record(asked=0, drafted=0, accepted=0)  # a round that asked for nothing says nothing of matches
    assert choice.matches.rate < matches / 2


@pytest.mark.e2e
@pytest.mark.parametrize("verifier_ngram", [True, False])
def test_through_the_services_greedy_requests_start_on_the_verifier_s_ngrams_and_seeded_ones_keep_the_proposer(
    verifier_ngram, tiny_llama, tiny_drafts, tmp_path
):
    """A draft-model stack: greedy requests start on the verifier's n-grams (unless --no-verifier-ngram)
    and equal plain decoding wherever they are drafted; seeded ones keep their fixed K on the proposer and
    equal in-process speculative decoding."""
    port = free_port()
    gateway_args = ("--metrics-port", str(port)) + (() if verifier_ngram else ("--no-verifier-ngram",))
    plain = LLM(str(tiny_llama)).generate([{"prompt_token_ids": p} for p in PROMPTS_E2E], GREEDY, use_tqdm=False)
    drafter = tiny_drafts["llama"]
    with running_stack(
        tiny_llama, tmp_path, method="draft_model", k=3, draft_model=drafter, gateway_args=gateway_args
    ) as stack:
        greedy = generate_concurrently(stack.gateway.address, [greedy_request(p) for p in PROMPTS_E2E])
        greedy_rounds = value(scrape(port)["splitspec_verify_rounds"], "_total", drafter="verifier")
        seeded = _seeded(stack.gateway.address)
        rounds = scrape(port)["splitspec_verify_rounds"]
    assert greedy == [o.outputs[0].token_ids for o in plain]
    assert seeded == _seeded_in_process(tiny_llama, {"model": str(drafter)})
    if verifier_ngram:
        assert greedy_rounds > 0, "the repetitive prompts found n-grams"
        assert value(rounds, "_total", drafter="verifier") == greedy_rounds, "no seeded round on the verifier"
    else:
        assert value(rounds, "_total", drafter="verifier") == 0
    assert value(rounds, "_total", drafter="proposer") > 0


def test_a_tree_s_kept_path_reaches_the_estimate_that_sizes_the_drafter_s_trees() -> None:
    """StepResult.tree_path says which of a tree's tokens were kept: always the first token's sibling."""
    choice = DrafterChoice(uses_local=False)
    for _ in range(30):
        choice.record(8, 8, 1, tree_path=[1])
    gains = choice.acceptance.node_gains(8)
    assert gains[1] > 0.8 and gains[0] < 0.2
