"""The gateway's drafter comes from its proposers' reports (gateway_svc.drafter_pool): the first sets
it, one that would plan rounds differently is refused, and --method refuses every other method."""

from __future__ import annotations

from dataclasses import dataclass

from gateway_svc.drafter_pool import DrafterPool
from splitspec.drafter_traits import DrafterTraits
from splitspec.drafts import HiddenStates

NGRAM = DrafterTraits("ngram", 6, 128, drafts_after_rejection=True)
SUFFIX = DrafterTraits("suffix", 16, 128, sizes_own_drafts=True, remembers_outputs=True)


@dataclass
class Reporting:
    """A proposer as the pool sees it: what it reported, and the pool's verdict."""

    address: str
    traits: DrafterTraits | None
    refusal: str | None = None


def test_the_first_proposer_to_report_sets_the_drafter_and_one_unlike_it_is_refused(capfd):
    silent, first, alike, other = (
        Reporting("a", None), Reporting("b", NGRAM), Reporting("c", NGRAM), Reporting("d", SUFFIX)
    )  # fmt: skip
    pool = DrafterPool()
    pool.admit([silent, first, alike, other])
    assert pool.traits == NGRAM
    assert first.refusal is None and alike.refusal is None and silent.refusal is None
    assert other.refusal is not None and "method is suffix, not ngram" in other.refusal
    assert "proposer d refused" in capfd.readouterr().err
    pool.admit([silent, first, alike, other])
    assert "refused" not in capfd.readouterr().err, "a refusal is logged once, not at every check"


def test_a_gateway_told_its_method_refuses_proposers_of_another_even_the_first():
    other, expected = Reporting("a", SUFFIX), Reporting("b", NGRAM)
    pool = DrafterPool(expected_method="ngram")
    pool.admit([other, expected])
    assert pool.traits == NGRAM and expected.refusal is None
    assert "--method ngram" in other.refusal


def test_the_pools_k_bound_is_the_smallest_any_admitted_proposer_takes():
    roomy, tight = Reporting("a", NGRAM), Reporting("b", DrafterTraits("ngram", 6, 8, drafts_after_rejection=True))
    pool = DrafterPool()
    pool.admit([roomy, tight])
    assert roomy.refusal is None and tight.refusal is None
    assert pool.traits.max_num_speculative_tokens == 8


def test_any_difference_that_changes_the_plan_refuses():
    eagle = DrafterTraits("eagle", 6, 128, hidden_states=HiddenStates.ALL, drafts_ahead=False)
    mlp_as_eagle = DrafterTraits("eagle", 6, 128, hidden_states=HiddenStates.LAST, drafts_ahead=False)
    first, second = Reporting("a", eagle), Reporting("b", mlp_as_eagle)
    DrafterPool().admit([first, second])
    assert first.refusal is None and "hidden_states" in second.refusal


@dataclass
class VerifierReporting:
    """A verifier as the pool sees it: its last info (None: not serving)."""

    info: object


def _verifier(traits: DrafterTraits | None) -> VerifierReporting:
    from splitspec.rpc import wire
    from splitspec_protos import splitspec_v1_pb2 as pb

    info = pb.VerifierInfo(model="m")
    if traits is not None:
        info.speculator.CopyFrom(wire.traits_to_proto(traits, "1"))
    return VerifierReporting(info)


EAGLE3 = DrafterTraits("eagle3", 3, 16, hidden_states=HiddenStates.ALL, hidden_layers=(2, 15, 27), drafts_ahead=False)


def test_the_verifiers_speculator_plans_every_request_over_the_proposers(capfd):
    pool = DrafterPool()
    pool.admit([Reporting("p", NGRAM)])
    assert pool.planned == (NGRAM, False)
    pool.admit_verifiers([VerifierReporting(None), _verifier(None)])
    assert pool.planned == (NGRAM, False), "no verifier holds a speculator"
    pool.admit_verifiers([_verifier(None), _verifier(EAGLE3)])
    assert pool.planned == (EAGLE3, True)
    assert "the verifiers draft with eagle3 beside their targets" in capfd.readouterr().err


def test_a_gateway_told_another_method_leaves_the_verifiers_speculator_unused():
    pool = DrafterPool(expected_method="ngram")
    pool.admit_verifiers([_verifier(EAGLE3)])
    assert pool.planned == (None, False)
