"""Drafting ahead (gateway_svc.draft_ahead): the proposer drafts round n+1 while round n is verified, and
the gateway uses that draft only when round n's outcome is the one it assumed.

The loop tests drive GatewayCore.generate against a scripted verifier and proposer: a greedy "target"
that is a fixed function of the context, and a drafter that is a fixed function of the context too,
wrong at some positions so that rounds both hit and miss. Each draft the verifier receives must be the
drafter's continuation of exactly the context it is verified at: a draft made for another outcome
would show up as a different continuation.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
import torch
from gateway_fakes import K, ScriptedProposer, drafter_continuation, target_output, verify_greedily
from verifier_stand_in import VerifierStandIn

from gateway_svc.draft_ahead import AheadDraft
from gateway_svc.drafter_pool import DrafterPool
from gateway_svc.generation import GatewayCore
from gateway_svc.round_plan import RoundSettings
from proposer_svc.ngram import NgramProposer
from proposer_svc.service import ProposerService
from splitspec.drafter_traits import DrafterTraits
from splitspec.drafts import Draft, DraftRequest
from splitspec.errors import ServiceError
from splitspec.sampling_params import SamplingParams
from splitspec_protos import splitspec_v1_pb2 as pb

PROMPT = [3, 1, 4, 1, 5]
MAX_TOKENS = 60


@dataclass
class ScriptedVerifier(VerifierStandIn):
    """Verifies greedily against target_next, and checks that each draft is the drafter's continuation
    of the context it is verified at."""

    tokens: list[int] = field(default_factory=list)
    drafts: list[list[int]] = field(default_factory=list)

    async def start(self, seq_id: str, token_ids: list[int], *args) -> None:
        self.tokens = list(token_ids)

    async def step(
        self, seq_id: str, committed_len: int, draft: Draft, local=None, pipelined=False, remote=None, every_draft=False
    ) -> pb.StepResult:
        assert committed_len == len(self.tokens)
        assert draft.token_ids == drafter_continuation(self.tokens, len(draft.token_ids)), "a draft for another context"
        self.drafts.append(list(draft.token_ids))
        await asyncio.sleep(0)  # let a draft ahead run meanwhile, as it does across the network
        num_accepted, committed = verify_greedily(self.tokens, draft.token_ids)
        self.tokens += committed
        return pb.StepResult(
            committed_len=committed_len,
            num_accepted=num_accepted,
            token_ids=committed,
            num_drafted=len(draft.token_ids),
        )


def run(proposer: ScriptedProposer, draft_ahead: bool = True) -> tuple[list[int], ScriptedVerifier]:
    """One step at a time (the path of --no-pipeline, and of requests that keep a fixed K; the pipelined
    path is tests/gateway/test_pipelined_steps.py's)."""
    verifier = ScriptedVerifier()
    core = GatewayCore(
        [verifier],
        [proposer],
        None,
        set(),
        max_model_len=1 << 20,
        rounds=RoundSettings(
            num_speculative_tokens=K, verifier_ngram=False, draft_ahead=draft_ahead, pipeline_steps=False
        ),
        drafters=DrafterPool(traits=DrafterTraits("draft_model", K, 128)),
    )
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)

    async def collect() -> list[int]:
        return [t async for delta in core.generate(None, PROMPT, params, K) for t in delta.token_ids]

    return asyncio.run(collect()), verifier


def test_drafts_ahead_are_used_only_after_the_outcome_they_assumed():
    proposer = ScriptedProposer()
    output, verifier = run(proposer)
    assert output == target_output(PROMPT, MAX_TOKENS)
    rounds = len([d for d in verifier.drafts if d])  # the last round has no room for drafts
    assert proposer.ahead_calls == rounds, "every round with drafts drafted ahead"
    hits = rounds - proposer.fresh_calls
    assert 0 < hits < rounds - 1, "some rounds used a draft made ahead, others missed and drafted again"


def test_without_drafting_ahead_every_round_asks_for_a_draft():
    proposer = ScriptedProposer()
    output, verifier = run(proposer, draft_ahead=False)
    assert output == target_output(PROMPT, MAX_TOKENS)
    assert proposer.ahead_calls == 0 and proposer.fresh_calls == len([d for d in verifier.drafts if d])


def test_a_proposer_lost_while_drafting_ahead_loses_nothing():
    proposer = ScriptedProposer(fail_ahead_from=3)
    output, verifier = run(proposer)
    assert output == target_output(PROMPT, MAX_TOKENS)
    assert not proposer.available, "the failure took the proposer out"
    assert verifier.drafts[-1] == [], "rounds after it verified without drafts"


@pytest.mark.parametrize(
    "committed, expected",
    [
        ([10, 11, 12, 20], Draft([21, 22], [None, None])),  # all accepted, and the guess was the bonus
        ([10, 11, 12, 19], None),  # all accepted, another bonus
        ([10, 11, 20], None),  # a rejection: shorter than assumed
        ([10, 11, 12], None),  # the guess is missing
    ],
)
def test_next_draft_only_for_the_assumed_outcome(committed, expected):
    ahead = AheadDraft([10, 11, 12], Draft([20, 21, 22], [None, None, None]))
    assert ahead.next_draft(committed) == expected


def test_a_draft_ahead_with_nothing_after_the_guess_gives_no_draft():
    assert AheadDraft([10], Draft([20], [None])).next_draft([10, 20]) is None


def test_the_ngram_drafter_looks_up_over_assumed_tokens_and_indexes_only_committed_ones():
    proposer = NgramProposer(1, 3)
    committed = [1, 2, 3, 4, 5, 1, 2]
    ahead = proposer.propose([DraftRequest("s", committed + [3], 3, num_assumed=1)])[0]
    assert ahead.token_ids == [4, 5, 1], "continues ... 2, 3 from its earlier occurrence"
    index = proposer._indexes["s"]
    assert index.tokens == committed, "the assumed token was not indexed"
    fresh = NgramProposer(1, 3).propose([DraftRequest("s", committed + [9, 1], 2)])[0]
    assert proposer.propose([DraftRequest("s", committed + [9, 1], 2)])[0] == fresh


def test_the_proposer_service_keeps_only_committed_tokens_of_a_draft_ahead():
    async def scenario() -> tuple[Draft, list[int]]:
        service = ProposerService(NgramProposer(1, 3), num_speculative_tokens=3)
        service.start()
        try:
            outcome = await service.draft(
                "s", committed_len=7, start=0, token_ids=[1, 2, 3, 4, 5, 1, 2], num_tokens=3, temperature=0,
                top_k=-1, seed=0, assumed_token_ids=[3],
            )  # fmt: skip
            return outcome.draft, service.contexts["s"]
        finally:
            await service.close()

    draft, held = asyncio.run(scenario())
    assert draft.token_ids == [4, 5, 1]
    assert held == [1, 2, 3, 4, 5, 1, 2]


def test_a_drafter_that_reads_hidden_states_refuses_to_draft_ahead():
    class HiddenStateDrafter(NgramProposer):
        hidden_states = "last"

    async def scenario() -> None:
        service = ProposerService(HiddenStateDrafter(1, 3), num_speculative_tokens=3)
        await service.draft(
            "s", committed_len=2, start=0, token_ids=[1, 2], num_tokens=3, temperature=0, top_k=-1, seed=0,
            assumed_token_ids=[3],
        )  # fmt: skip

    with pytest.raises(ServiceError, match="assumed_token_ids.*cannot draft ahead"):
        asyncio.run(scenario())


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_a_draft_models_draft_ahead_is_the_draft_it_makes_after_the_outcome(tiny_drafts, temperature):
    """What makes a hit exact: after the assumed tokens and the guess are committed, the draft model
    drafts the very tokens it drafted ahead, from the same q (seeded draws are keyed by position)."""
    from proposer_svc.factory import build_proposer
    from splitspec.config import SpeculationMethod, SpeculativeConfig

    def proposer():
        spec = SpeculativeConfig(SpeculationMethod.DRAFT_MODEL, 4, draft_model=str(tiny_drafts["llama"]))
        return build_proposer(spec, target_vocab_size=None, device="cpu")

    context = [5, 6, 7, 8, 9, 5, 6]
    ahead_proposer = proposer()
    first = ahead_proposer.propose([DraftRequest("s", context, 3, temperature, seed=11)])[0]
    ahead = ahead_proposer.propose(
        [DraftRequest("s", context + first.token_ids, 5, temperature, seed=11, num_assumed=3)]
    )[0]
    committed = context + first.token_ids + ahead.token_ids[:1]
    for drafter in (ahead_proposer, proposer()):  # the one that drafted ahead, and a fresh one
        after = drafter.propose([DraftRequest("s", committed, 4, temperature, seed=11)])[0]
        assert after.token_ids == ahead.token_ids[1:]
        for q_after, q_ahead in zip(after.q, ahead.q[1:]):
            if temperature == 0:
                assert q_after is None and q_ahead is None
            else:
                assert q_after.token_ids.tolist() == q_ahead.token_ids.tolist()
                assert torch.allclose(q_after.probs, q_ahead.probs, rtol=0, atol=1e-6)


def test_the_ngram_drafter_guesses_a_shorter_n_grams_continuation_when_the_longest_s_is_excluded():
    """A draft ahead for the outcome that rejects 10: its first token must be another guess."""
    tokens = [5, 6, 10, 11, 6, 20, 5, 6]  # [5, 6] was followed by 10; [6] most recently by 20

    def ahead(excluded: tuple[int, ...]) -> list[int]:
        return NgramProposer(1, 2).propose([DraftRequest("s", tokens, 2, excluded_first=excluded)])[0].token_ids

    assert ahead(()) == [10, 11]
    assert ahead((10,)) == [20, 5]
    assert ahead((10, 20)) == []


def _draft_model_proposer(tiny_drafts):
    from proposer_svc.factory import build_proposer
    from splitspec.config import SpeculationMethod, SpeculativeConfig

    spec = SpeculativeConfig(SpeculationMethod.DRAFT_MODEL, 4, draft_model=str(tiny_drafts["llama"]))
    return build_proposer(spec, target_vocab_size=None, device="cpu")


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_a_draft_models_draft_after_a_rejection_guesses_another_token_then_drafts_what_follows_it(
    tiny_drafts, temperature
):
    """What makes a hit after a rejection exact: after the draft's accepted part and the guess are
    committed, the draft model drafts the very tokens it drafted ahead. Asked in one batch with the
    all-accepted outcome of the same sequence, each is the draft it makes alone."""
    context = [5, 6, 7, 8, 9, 5, 6]
    drafter = _draft_model_proposer(tiny_drafts)
    first = drafter.propose([DraftRequest("s", context, 3, temperature, seed=11)])[0].token_ids
    outcomes = [
        DraftRequest("s", context + first, 4, temperature, seed=11, num_assumed=3),
        DraftRequest("s", context + first[:1], 4, temperature, seed=11, num_assumed=1, excluded_first=(first[1],)),
        DraftRequest("s", context, 4, temperature, seed=11, excluded_first=(first[0],)),
    ]
    together = drafter.propose(outcomes)
    for request, ahead in zip(outcomes, together):
        assert len(ahead.token_ids) == 4 and ahead.token_ids[0] not in request.excluded_first
        assert _draft_model_proposer(tiny_drafts).propose([request])[0].token_ids == ahead.token_ids
        committed = request.token_ids + ahead.token_ids[:1]
        after = _draft_model_proposer(tiny_drafts).propose([DraftRequest("s", committed, 3, temperature, seed=11)])
        assert after[0].token_ids == ahead.token_ids[1:]


class _FixedDrafter(NgramProposer):
    """Always drafts 7, 8: a drafter with no other guess for its first token."""

    def propose(self, requests):
        return [Draft([7, 8], [None, None]) for _ in requests]


def _draft_on(service: ProposerService, start: int, token_ids: list[int], **kwargs):
    return service.draft(
        "s", committed_len=start + len(token_ids), start=start, token_ids=token_ids, num_tokens=2, temperature=0,
        top_k=-1, seed=0, **kwargs,
    )  # fmt: skip


def test_a_draft_ahead_whose_first_token_is_excluded_is_no_draft_whatever_the_drafter():
    async def scenario() -> list[list[int]]:
        service = ProposerService(_FixedDrafter(1, 3), num_speculative_tokens=2)
        service.start()
        try:
            excluded = await _draft_on(service, 0, [1, 2, 3], excluded_first_token_ids=[7])
            other = await _draft_on(service, 0, [1, 2, 3], excluded_first_token_ids=[3])
            return [excluded.draft.token_ids, other.draft.token_ids]
        finally:
            await service.close()

    assert asyncio.run(scenario()) == [[], [7, 8]]


def test_the_proposer_service_takes_tokens_it_holds_again_and_asks_for_all_when_they_differ():
    """Drafts made ahead for several outcomes each carry the committed tokens since the last draft: the
    ones the proposer holds already must be the same, and it appends the rest."""

    async def scenario() -> list:
        service = ProposerService(NgramProposer(1, 3), num_speculative_tokens=2)
        service.start()
        try:
            await _draft_on(service, 0, [1, 2, 3, 4, 5, 1, 2])
            again = await _draft_on(service, 4, [5, 1, 2])
            more = await _draft_on(service, 5, [1, 2, 3])
            held = list(service.contexts["s"])
            differ = await _draft_on(service, 6, [9, 9])
            gap = await _draft_on(service, 1, [2])  # after `differ` it holds nothing
            return [again, more, held, differ, gap]
        finally:
            await service.close()

    again, more, held, differ, gap = asyncio.run(scenario())
    assert not again.needs_full_context and again.draft.token_ids == [3, 4]
    assert not more.needs_full_context and held == [1, 2, 3, 4, 5, 1, 2, 3]
    assert differ.needs_full_context and gap.needs_full_context


def test_too_many_excluded_first_tokens_are_refused_by_name():
    async def scenario() -> None:
        service = ProposerService(NgramProposer(1, 3), num_speculative_tokens=2)
        await _draft_on(service, 0, [1, 2], excluded_first_token_ids=list(range(65)))

    with pytest.raises(ServiceError, match="excluded_first_token_ids: at most 64"):
        asyncio.run(scenario())


def test_a_release_that_resends_tokens_the_proposer_holds_still_hands_the_drafter_the_whole_output():
    """A draft ahead whose answer the sender never heard (it ended the request first) left the proposer
    holding more than the sender knows: the release's tokens overlap them, and suffix memory keeps all."""

    class Remembering(_FixedDrafter):
        finished: list[list[int]] = []

        def finish(self, seq_id, token_ids):
            self.finished.append(list(token_ids))

    async def scenario() -> list[list[int]]:
        drafter = Remembering(1, 3)
        service = ProposerService(drafter, num_speculative_tokens=2)
        service.start()
        try:
            await _draft_on(service, 0, [1, 2, 3])
            await _draft_on(service, 3, [4, 5])  # the sender never heard of this one
            await service.release("s", 3, [4, 5, 6])
            await _draft_on(service, 0, [7, 8])
            await service.release("t", 0, [9])  # never drafted: nothing to remember
            await service.release("s", 1, [9, 9])  # not what it holds: forgotten, not remembered
            return drafter.finished
        finally:
            await service.close()

    assert asyncio.run(scenario()) == [[1, 2, 3, 4, 5, 6]]
