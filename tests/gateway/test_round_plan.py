"""The one decision of how a request's rounds run (gateway_svc.round_plan): a table of the cases a
reader should be able to check by eye, and rules that hold for every combination of drafter, gateway
settings and request."""

from __future__ import annotations

import itertools
from dataclasses import fields

import pytest

from gateway_svc.round_modes import local_draft
from gateway_svc.round_plan import RoundMode, RoundSettings, default_num_speculative_tokens, plan_request
from splitspec.drafter_traits import DrafterTraits
from splitspec.drafts import HiddenStates
from splitspec.sampling_params import SamplingParams

K = 6
NGRAM = DrafterTraits("ngram", K, 128, drafts_after_rejection=True)
DRAFT_MODEL = DrafterTraits("draft_model", K, 128, samples_drafts=True, drafts_after_rejection=True)
MLP = DrafterTraits("mlp_speculator", K, 128, hidden_states=HiddenStates.LAST, drafts_ahead=False)
EAGLE = DrafterTraits("eagle", K, 128, hidden_states=HiddenStates.ALL, drafts_ahead=False)
SUFFIX = DrafterTraits("suffix", K, 128, sizes_own_drafts=True, remembers_outputs=True)
DRAFTERS = {"none": None, "ngram": NGRAM, "draft_model": DRAFT_MODEL, "mlp": MLP, "eagle": EAGLE, "suffix": SUFFIX}
GREEDY = SamplingParams(temperature=0)
SAMPLED = SamplingParams(temperature=0.8, seed=1)

# drafter, settings, params, K asked -> (mode, local first, measured, K planned)
TABLE = [
    ("ngram", RoundSettings(), GREEDY, K, RoundMode.PIPELINED, True, False, K),
    ("ngram", RoundSettings(local_ngram=False), GREEDY, K, RoundMode.DRAFTED_AHEAD, False, False, K),
    ("ngram", RoundSettings(local_ngram=False, pipeline_steps=False), GREEDY, K, RoundMode.ONE_STEP, False, False, K),
    ("draft_model", RoundSettings(), GREEDY, K, RoundMode.PIPELINED, True, True, K),
    ("draft_model", RoundSettings(), SAMPLED, K, RoundMode.ONE_STEP, False, False, K),
    ("draft_model", RoundSettings(verifier_ngram=False), GREEDY, K, RoundMode.DRAFTED_AHEAD, False, False, K),
    ("draft_model", RoundSettings(verifier_ngram=False), SAMPLED, K, RoundMode.ONE_STEP, False, False, K),
    (
        "draft_model",
        RoundSettings(verifier_ngram=False, direct_drafts=True),
        SAMPLED,
        K,
        RoundMode.PIPELINED,
        False,
        False,
        K,
    ),
    ("draft_model", RoundSettings(adaptive=False), GREEDY, K, RoundMode.DRAFTED_AHEAD, False, False, K),
    ("mlp", RoundSettings(), GREEDY, K, RoundMode.ONE_STEP, False, False, K),
    ("eagle", RoundSettings(), SAMPLED, K, RoundMode.ONE_STEP, False, False, K),
    ("eagle", RoundSettings(direct_drafts=True), GREEDY, K, RoundMode.PIPELINED, False, False, K),
    ("suffix", RoundSettings(), GREEDY, K, RoundMode.DRAFTED_AHEAD, False, False, K),
    ("suffix", RoundSettings(draft_ahead=False), GREEDY, K, RoundMode.ONE_STEP, False, False, K),
    ("none", RoundSettings(), GREEDY, K, RoundMode.PIPELINED, False, False, 0),
    ("none", RoundSettings(ngram_without_proposers=True), GREEDY, K, RoundMode.PIPELINED, True, False, K),
    ("draft_model", RoundSettings(), GREEDY, 0, RoundMode.PIPELINED, False, False, 0),
    ("draft_model", RoundSettings(pipeline_steps=False), GREEDY, 0, RoundMode.ONE_STEP, False, False, 0),
]


@pytest.mark.parametrize(
    "drafter, settings, params, asked, mode, local, measured, k", TABLE, ids=[f"row{i}" for i in range(len(TABLE))]
)
def test_the_table_of_round_modes(drafter, settings, params, asked, mode, local, measured, k):
    plan = plan_request(DRAFTERS[drafter], settings, asked, params)
    assert (plan.mode(plan.starts_local), plan.starts_local, plan.measured, plan.num_speculative_tokens) == (
        mode,
        local,
        measured,
        k,
    )


FLAGS = ("adaptive", "local_ngram", "verifier_ngram", "draft_ahead", "pipeline_steps", "direct_drafts",
         "ngram_without_proposers")  # fmt: skip


def every_combination():
    assert set(FLAGS) == {f.name for f in fields(RoundSettings) if f.type in ("bool", bool)}, "a flag is untested"
    for drafter, values, params, asked in itertools.product(
        DRAFTERS, itertools.product((False, True), repeat=len(FLAGS)), (GREEDY, SAMPLED), (0, K)
    ):
        yield DRAFTERS[drafter], RoundSettings(**dict(zip(FLAGS, values))), params, asked


def test_rules_that_hold_for_every_combination():
    checked = 0
    for traits, settings, params, asked in every_combination():
        plan = plan_request(traits, settings, asked, params)
        local_only = plan.local_ngram is not None and not plan.measured
        for local in {plan.starts_local, plan.starts_local if not plan.measured else not plan.starts_local}:
            mode = plan.mode(local)
            assert settings.pipeline_steps or mode == RoundMode.ONE_STEP, "pipelining off: one step at a time"
            if mode == RoundMode.DRAFTED_AHEAD:
                assert not local and plan.draft_ahead and not plan.fixed_k and not plan.direct_drafts
            if local and settings.pipeline_steps:
                assert mode == RoundMode.PIPELINED, "the verifier's own n-grams never wait for a proposer"
        if plan.draft_ahead:
            assert traits is not None and traits.hidden_states == HiddenStates.NONE, "assumed tokens have no states"
        assert plan.fixed_k == (traits is not None and traits.samples_drafts and not params.greedy)
        assert plan.drafts_after_rejection == (traits is not None and traits.drafts_after_rejection)
        if plan.measured:
            assert plan.local_ngram is not None and plan.adaptive and not plan.fixed_k and plan.num_speculative_tokens
        if plan.starts_local:
            assert plan.local_ngram is not None
        if traits is not None and traits.remembers_outputs:
            assert plan.affinity and not plan.starts_local, "a suffix drafter must see every committed token"
        if traits is not None and traits.sizes_own_drafts:
            assert not plan.adaptive
        if traits is None and not (settings.ngram_without_proposers and settings.local_ngram):
            assert plan.num_speculative_tokens == 0, "no proposer has said what it drafts"
        if local_only:
            assert plan.hidden_states == HiddenStates.NONE
        elif traits is not None:
            assert plan.hidden_states == traits.hidden_states
        assert plan.num_speculative_tokens <= asked
        checked += 1
    assert checked == len(DRAFTERS) * 2 ** len(FLAGS) * 2 * 2


def test_a_sampled_request_drafting_trees_from_q_is_never_drafted_ahead():
    """Drafts ahead are chains: a round of one would draw other samples than the tree it replaces."""
    trees = RoundSettings(tree_width=3)
    assert not plan_request(DRAFT_MODEL, trees, K, SAMPLED).draft_ahead
    assert plan_request(DRAFT_MODEL, trees, K, GREEDY).draft_ahead
    assert plan_request(NGRAM, trees, K, SAMPLED).draft_ahead  # one-hot drafts: the target's own draws
    assert plan_request(DRAFT_MODEL, RoundSettings(), K, SAMPLED).draft_ahead


def test_a_request_asks_no_more_than_the_proposers_take():
    small = DrafterTraits("draft_model", K, 3)
    plan = plan_request(small, RoundSettings(verifier_ngram=False), 10, GREEDY)
    assert plan.num_speculative_tokens == 3


@pytest.mark.parametrize(
    "traits, settings, expected",
    [
        (None, RoundSettings(), 0),
        (None, RoundSettings(ngram_without_proposers=True), 10),
        (SUFFIX, RoundSettings(), K),
        (SUFFIX, RoundSettings(num_speculative_tokens=3), 3),
    ],
)
def test_a_request_naming_no_k_gets_the_gateways_else_the_proposers(traits, settings, expected):
    assert default_num_speculative_tokens(traits, settings) == expected


EAGLE3 = DrafterTraits("eagle3", K, 16, hidden_states=HiddenStates.ALL, hidden_layers=(2, 15, 27), drafts_ahead=False)


@pytest.mark.parametrize("traits", [EAGLE3, EAGLE, MLP])
def test_a_speculator_beside_the_target_drafts_every_round_on_the_verifier_pipelined(traits):
    """The verifiers' head (VerifierInfo.speculator): every round asks the verifier to draft with it, no
    state goes to the gateway or a proposer, and steps keep the pipeline full as the verifier's
    n-grams do; with pipelining off, one step at a time."""
    for settings, params in itertools.product(
        [RoundSettings(), RoundSettings(direct_drafts=True, verifier_ngram=False)], [GREEDY, SAMPLED]
    ):
        plan = plan_request(traits, settings, 20, params, on_verifiers=True)
        assert plan.starts_local and plan.local_speculator and not plan.measured
        assert plan.mode(True) == RoundMode.PIPELINED
        assert (plan.hidden_states, plan.hidden_layers) == (HiddenStates.NONE, ())
        assert not (plan.draft_ahead or plan.direct_drafts or plan.affinity or plan.fixed_k)
        assert plan.num_speculative_tokens == min(20, traits.max_num_speculative_tokens)
        local = local_draft(plan, 4)
        assert (local.num_tokens, local.speculator) == (4, True)
    plan = plan_request(traits, RoundSettings(pipeline_steps=False), K, GREEDY, on_verifiers=True)
    assert plan.mode(True) == RoundMode.ONE_STEP
    ngram = local_draft(plan_request(NGRAM, RoundSettings(), K, GREEDY), 4)
    assert (ngram.speculator, ngram.prompt_lookup_min, ngram.prompt_lookup_max) == (False, 1, 4)
