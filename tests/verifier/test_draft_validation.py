"""The verifier refuses any draft whose q is not a distribution over the vocabulary giving the drafted
token mass, or an unusable sequence id, with INVALID_ARGUMENT naming the field, and goes on serving."""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest
import torch

from splitspec import SamplingParams
from splitspec.config import RunnerConfig
from splitspec.drafts import Draft
from splitspec.errors import ServiceError
from splitspec.models.loader import load_runner
from splitspec.sparse_distribution import SparseDistribution
from verifier_svc.draft_validation import check_draft, check_seq_id
from verifier_svc.service import VerifierService

VOCAB = 100


def q(ids: list[int], probs: list[float]) -> SparseDistribution:
    return SparseDistribution(torch.tensor(ids, dtype=torch.int64), torch.tensor(probs, dtype=torch.float64))


def one(token: int, dist: SparseDistribution | None) -> Draft:
    return Draft([7, token], [None, dist])


@pytest.mark.parametrize(
    "draft, field",
    [
        (one(5, q([5, 6], [0.5, math.nan])), "drafts[1].q.probs"),
        (one(5, q([5, 6], [0.5, math.inf])), "drafts[1].q.probs"),
        (one(5, q([5, 6], [0.7, -0.1])), "drafts[1].q.probs"),
        (one(5, q([5, 6], [0.7, 0.4])), "drafts[1].q.probs"),
        (one(5, q([5, 5], [0.5, 0.5])), "drafts[1].q.token_ids"),
        (one(5, q([5, 6, 7], [0.5, 0.5])), "drafts[1].q"),
        (one(5, q([5, VOCAB], [0.5, 0.5])), "drafts[1].q.token_ids"),
        (one(5, q([5, -1], [0.5, 0.5])), "drafts[1].q.token_ids"),
        (one(5, q([6, 7], [0.5, 0.5])), "drafts[1].q"),
        (one(5, q([5, 6], [0.0, 1.0])), "drafts[1].q"),
        (one(5, q([], [])), "drafts[1].q"),
        (one(VOCAB, None), "drafts[1].token_id"),
        (one(-3, None), "drafts[1].token_id"),
    ],
    ids=["nan", "inf", "negative", "over 1", "duplicate id", "ids without probs", "id past vocab", "negative id",
         "token not in q", "token with 0 mass", "empty q", "token past vocab", "negative token"],
)  # fmt: skip
def test_a_draft_that_is_not_a_distribution_is_refused_naming_the_field(draft, field):
    with pytest.raises(ServiceError) as refused:
        check_draft(draft, VOCAB)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.message.startswith(field + ":"), refused.value.message


def test_distributions_that_are_allowed_pass():
    check_draft(one(5, q([5, 6], [0.25, 0.75])), VOCAB)
    check_draft(one(5, q([5], [1.0 + 5e-7])), VOCAB)  # float rounding of a sum to 1
    check_draft(one(5, q([9, 5], [0.1, 0.3])), VOCAB)  # a truncated top-k q sums below 1: the exact q drawn from
    check_draft(Draft(), VOCAB)


@pytest.mark.parametrize("seq_id", ["", "x" * 129, "tab\there", "é"])
def test_an_unusable_sequence_id_is_refused(seq_id):
    with pytest.raises(ServiceError) as refused:
        check_seq_id(seq_id)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and refused.value.message.startswith("seq_id:")
    check_seq_id("a" * 128)


def test_the_verifier_refuses_a_nan_q_commits_nothing_and_goes_on(tiny_llama):
    async def main():
        service = VerifierService(load_runner(tiny_llama, RunnerConfig(kv_cache_memory_bytes=1 << 20)))
        service.start()
        service.add("a", [5, 6, 7, 8], SamplingParams(temperature=0.8, max_tokens=None), seed=1)
        with pytest.raises(ServiceError) as refused:
            await service.step("a", 4, Draft([9], [q([9, 10], [math.nan, 0.5])]))
        untouched = list(service.sequences["a"].tokens)
        outcome = await service.step("a", 4, Draft([9], [q([9, 10], [0.5, 0.5])]))
        with pytest.raises(ServiceError) as bad_id:
            service.add("", [5, 6], SamplingParams(temperature=0), seed=0)
        await service.close()
        return refused.value, untouched, outcome, bad_id.value

    refused, untouched, outcome, bad_id = asyncio.run(main())
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT and "drafts[0].q.probs" in refused.message
    assert untouched == [5, 6, 7, 8]
    assert outcome.committed_len == 4 and len(outcome.token_ids) >= 1
    assert bad_id.code == grpc.StatusCode.INVALID_ARGUMENT


def test_the_verifier_refuses_more_drafts_a_step_than_its_setting_and_goes_on(tiny_llama):
    from verifier_svc.local_drafts import LocalDraftSpec

    async def main():
        runner = load_runner(tiny_llama, RunnerConfig(kv_cache_memory_bytes=1 << 20))
        service = VerifierService(runner, max_drafts_per_step=2)
        service.start()
        service.add("a", [5, 6, 7, 8], SamplingParams(temperature=0, max_tokens=None), seed=0)
        refusals = []
        for draft, local in ((Draft([9, 9, 9], [None] * 3), None), (Draft(), LocalDraftSpec(3, 1, 3))):
            with pytest.raises(ServiceError) as refused:
                await service.step("a", 4, draft, local)
            refusals.append(refused.value)
        untouched = list(service.sequences["a"].tokens)
        outcome = await service.step("a", 4, Draft([9, 9], [None] * 2))
        await service.close()
        return refusals, untouched, outcome

    refusals, untouched, outcome = asyncio.run(main())
    assert [r.code for r in refusals] == [grpc.StatusCode.INVALID_ARGUMENT] * 2
    assert refusals[0].message.startswith("drafts: at most 2 drafts a step") and refusals[0].message.endswith("got 3")
    assert refusals[1].message.startswith("local_draft.num_tokens: at most 2")
    assert untouched == [5, 6, 7, 8] and outcome.committed_len == 4 and outcome.num_drafted == 2


def test_the_proposer_refuses_to_draft_more_than_its_setting_and_goes_on():
    from proposer_svc.ngram import NgramProposer
    from proposer_svc.service import ProposerService

    async def main():
        service = ProposerService(NgramProposer(1, 3), num_speculative_tokens=3, max_drafts_per_step=4)
        service.start()
        step = dict(committed_len=4, start=0, token_ids=[5, 6, 5, 6], temperature=0.0, top_k=0, seed=0)
        with pytest.raises(ServiceError) as refused:
            await service.draft("a", num_tokens=5, **step)
        outcome = await service.draft("a", num_tokens=4, **step)
        await service.close()
        return refused.value, outcome

    refused, outcome = asyncio.run(main())
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT and refused.message.startswith(
        "draft.num_tokens: at most 4"
    )
    assert outcome.draft.token_ids == [5, 6], "it drafts: the n-gram match ends where the context does"


def test_tree_siblings_must_be_verifiable_together():
    """One-hot siblings distinct, or all drawn from q (verify_tree's two multi-draft rules)."""
    shared = q([5, 6], [0.5, 0.5])
    check_draft(Draft([5, 6, 7], [None, None, None], [-1, -1, 0]), VOCAB)
    check_draft(Draft([5, 5, 6], [shared, q([5, 6], [0.5, 0.5]), None], [-1, -1, 0]), VOCAB)  # i.i.d. draws repeat
    check_draft(Draft([5, 6], [shared, q([6], [1.0])], [-1, -1]), VOCAB)  # drawn without replacement
    refusals = [
        ("one-hot siblings must be distinct", Draft([5, 5], [None, None], [-1, -1])),
        ("all one-hot, or all drawn from q", Draft([5, 6], [None, shared], [-1, -1])),
    ]
    for problem, draft in refusals:
        with pytest.raises(ServiceError) as refused:
            check_draft(draft, VOCAB)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert (
            problem.strip() in refused.value.message
            and "siblings under the last committed token" in refused.value.message
        )
