"""The verifier cuts drafts for the whole pass: only what pays is verified, and never a seeded sample changed."""

from __future__ import annotations

import asyncio

import torch
from hypothesis import given
from hypothesis import strategies as st

from splitspec import LLM, SamplingParams
from splitspec.adaptive_k import PassCostModel, PositionalAcceptance
from splitspec.config import RunnerConfig
from splitspec.drafts import Draft
from splitspec.models.loader import load_runner
from splitspec.sparse_distribution import SparseDistribution
from verifier_svc.draft_cuts import DraftCuts, PlannedStep, may_cut
from verifier_svc.service import VerifierService

CPU_LIKE = PassCostModel({1: 0.040, 2: 0.062, 3: 0.074, 4: 0.088, 6: 0.093, 8: 0.094, 16: 0.10, 32: 0.14, 64: 0.20})
FLAT = PassCostModel({1: 0.05, 256: 0.05})
LINEAR = PassCostModel({1: 0.01, 256: 2.56})  # every row costs a whole pass: no draft can pay
GREEDY = SamplingParams(temperature=0, max_tokens=None)
SAMPLED = SamplingParams(temperature=0.8, max_tokens=None)


def _rejecting(cuts: DraftCuts, seq_id: str, rounds: int = 8) -> None:
    for _ in range(rounds):
        cuts.record(seq_id, 4, 0)


def test_a_sequence_whose_drafts_fail_is_cut_and_one_whose_drafts_land_is_not():
    cuts = DraftCuts()
    _rejecting(cuts, "bad")
    for _ in range(8):
        cuts.record("good", 4, 4)
    assert cuts.plan([PlannedStep("bad", 1, 4, True)], CPU_LIKE) == [0]
    assert cuts.plan([PlannedStep("good", 1, 4, True)], CPU_LIKE) == [4]


def test_a_tree_is_cut_by_which_of_its_tokens_were_kept_not_by_the_length_of_its_paths():
    """Rounds of 8-token trees whose kept path is always token 1 alone (the first token's sibling): by
    position, as a chain, the first draft is always accepted and the second never, so a chain's
    estimate would verify the first token only, which is never kept; sized as a tree, the first two
    are verified, which brings the one kept. Paths through 1, 4 and 6 keep the first 7."""
    cuts = DraftCuts()
    for _ in range(30):
        cuts.record("sibling", 8, 1, path=[1])
        cuts.record("deep", 8, 3, path=[1, 4, 6])
    assert cuts.plan([PlannedStep("sibling", 1, 8, True, tree=True)], CPU_LIKE) == [2]
    assert cuts.plan([PlannedStep("sibling", 1, 8, True)], CPU_LIKE) == [1]
    assert cuts.plan([PlannedStep("deep", 1, 8, True, tree=True)], CPU_LIKE) == [7]


def test_drafts_that_may_not_be_cut_are_verified_whatever_they_cost():
    cuts = DraftCuts()
    _rejecting(cuts, "a")
    assert cuts.plan([PlannedStep("a", 1, 4, False)], LINEAR) == [4]
    assert cuts.plan([PlannedStep("a", 1, 4, True)], LINEAR) == [0]


def test_without_measured_costs_nothing_is_cut():
    cuts = DraftCuts()
    _rejecting(cuts, "a")
    assert cuts.plan([PlannedStep("a", 1, 4, True)], None) == [4]


def test_the_speculator_s_drafting_time_shortens_only_the_drafts_it_makes():
    cuts = DraftCuts()
    for seq_id in ("head", "sent"):
        for _ in range(8):
            cuts.record(seq_id, 8, 5)  # accepted often, not always
    for _ in range(3):  # the first two are its warm-up, dropped
        cuts.head_draft_s.add(0.02)  # a draft step of the head costs 40% of a pass
    head, sent = (
        cuts.plan([PlannedStep("head", 1, 8, True, drafted_here=True)], FLAT),
        cuts.plan([PlannedStep("sent", 1, 8, True)], FLAT),
    )
    assert sent == [8] and 0 <= head[0] < 8


def test_only_greedy_requests_or_one_hot_drafts_may_be_cut():
    q = SparseDistribution(torch.tensor([3, 4]), torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert may_cut(GREEDY, Draft([3], [q]))
    assert may_cut(SAMPLED, Draft([3, 4], [None, None]))
    assert not may_cut(SAMPLED, Draft([3], [q]))


def test_deep_positions_are_learned_apart_from_the_first():
    """Copying drafts: the first token is often wrong, but once one is right the rest follow."""
    estimate = PositionalAcceptance()
    for _ in range(20):
        estimate.update(drafted=6, accepted=0)
        estimate.update(drafted=6, accepted=6)
    assert estimate.conditional(0) < 0.6 < 0.9 < estimate.conditional(3)
    chain = estimate.chain(6)
    assert chain[-1] > 0.5 * chain[0], "a single rate would give chain[5] = chain[0] ** 6"


@given(st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8)), max_size=30), st.integers(0, 10))
def test_chains_are_probabilities_that_never_grow(rounds, limit):
    estimate = PositionalAcceptance()
    for drafted, accepted in rounds:
        estimate.update(drafted, min(drafted, accepted))
    chain = estimate.chain(limit)
    assert len(chain) == limit and all(0 <= b <= a <= 1 for a, b in zip([1.0, *chain], chain))


def _plain(tiny_llama, prompt: list[int], n: int) -> list[int]:
    params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
    llm = LLM(str(tiny_llama), kv_cache_memory_bytes=1 << 20)
    return llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0].outputs[0].token_ids


async def _decode_with(
    service: VerifierService, seq_id: str, drafts_of, steps: int, every_draft: bool
) -> tuple[list[int], list[int]]:
    """Step with the drafts `drafts_of(committed tokens)` gives; the tokens and drafts verified per step."""
    out, verified = [], []
    for _ in range(steps):
        tokens = service.sequences[seq_id].tokens
        outcome = await service.step(seq_id, len(tokens), drafts_of(list(tokens)), every_draft=every_draft)
        out.extend(outcome.token_ids)
        verified.append(outcome.num_drafted)
    return out, verified


def test_the_verifier_verifies_only_what_pays_and_output_is_the_target_s(tiny_llama):
    prompt, n = [5, 6, 7, 8, 9, 5, 6], 24
    plain = _plain(tiny_llama, prompt, n + 8)
    right = lambda tokens: Draft(plain[len(tokens) - len(prompt) :][:3], [None] * 3)  # noqa: E731
    wrong = lambda tokens: Draft([(t + 1) % 100 for t in right(tokens).token_ids], [None] * 3)  # noqa: E731

    async def run(cost: PassCostModel, drafts_of, every_draft: bool = False) -> tuple[list[int], list[int]]:
        service = VerifierService(load_runner(tiny_llama, RunnerConfig(kv_cache_memory_bytes=1 << 20)))
        service.cost_model = PassCostModel(dict(zip(*cost.curve)))  # a copy: the service's passes move its curve
        service.start()
        service.add("a", prompt, GREEDY, seed=0)
        try:
            return await _decode_with(service, "a", drafts_of, 8, every_draft)
        finally:
            await service.close()

    out, verified = asyncio.run(run(FLAT, right))
    assert verified == [3] * 8 and out == plain[: len(out)]
    out, verified = asyncio.run(run(LINEAR, right))
    # the first step carries the prompt, beside which three more rows are cheap; no later one pays
    assert verified[1:] == [0] * 7 and out == plain[: len(out)]
    out, verified = asyncio.run(run(LINEAR, right, every_draft=True))  # a gateway with --fixed-k
    assert verified == [3] * 8 and out == plain[: len(out)]
    out, verified = asyncio.run(run(CPU_LIKE, wrong))
    assert verified[0] > 0 and verified[-1] == 0, "drafts tried at first, cut once they keep failing"
    assert out == plain[: len(out)]
