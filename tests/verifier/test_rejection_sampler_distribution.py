"""The verifier's output has exactly the distribution speculative sampling promises.

On a 6-token vocabulary with fixed target rows p_i and draft distributions q_i that differ clearly
from them (dense, sparse, one-hot with q and one-hot without q as the n-gram drafter sends), drafts
are drawn from q_i with the DRAFT stream of splitspec.seeded_noise, as the draft-model proposer does,
so they are independent of the verifier's own ACCEPT / RESIDUAL / TARGET streams. Observed counts
over seeds 0..n-1 are compared with exactly computed expectations by a chi-square goodness-of-fit
test; each such test has a false-alarm rate of ALPHA = 1e-3. Seeds are fixed, so a run is
deterministic: the rate is the chance that this choice of seeds would fail a correct sampler.

The same tests are then run on two deliberately broken samplers to show they have the power to
catch the classic mistakes: accepting with probability p(x) instead of min(1, p(x) / q(x)), and
drawing the correction from p instead of normalize(max(0, p - q)).
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from scipy import stats

from splitspec import seeded_noise
from splitspec.logits_processing import target_probs
from splitspec.sparse_distribution import SparseDistribution
from verifier_svc.rejection_sampler import VerifyRequest, VerifyResult, sample_target, verify

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny tensors: a thread pool only adds waits

ALPHA = 1e-3
VOCAB = 6
FIRST_POSITION = 7
MIN_EXPECTED_COUNT = 5.0

# Row i is p at position FIRST_POSITION + i when temperature is 1 and nothing is filtered.
TARGET_ROWS = torch.tensor(
    [
        [0.40, 0.25, 0.15, 0.10, 0.06, 0.04],
        [0.05, 0.10, 0.30, 0.30, 0.15, 0.10],
        [0.10, 0.35, 0.05, 0.20, 0.05, 0.25],
        [0.20, 0.05, 0.10, 0.15, 0.30, 0.20],
    ],
    dtype=torch.float64,
)
LOGITS = TARGET_ROWS.log().to(torch.float32)  # [4, vocab]


def _q(token_ids: list[int], probs: list[float]) -> SparseDistribution:
    return SparseDistribution(torch.tensor(token_ids), torch.tensor(probs, dtype=torch.float64))


DENSE_Q = _q(list(range(VOCAB)), [0.05, 0.10, 0.15, 0.30, 0.25, 0.15])
SPARSE_Q = _q([0, 1, 2], [0.15, 0.55, 0.30])
ONE_HOT_Q = _q([1], [1.0])
NGRAM_DRAFT = 1
"""A one-hot draft sent without q: only the token, as the n-gram drafter does."""

Draft = SparseDistribution | int
"""How a position is drafted: drawn from a q, or a fixed token sent with q=None."""

Sampler = Callable[[VerifyRequest], VerifyResult]


def _draw_drafts(drafts: list[Draft], seed: int) -> tuple[list[int], list[SparseDistribution | None]]:
    tokens: list[int] = []
    qs: list[SparseDistribution | None] = []
    for i, draft in enumerate(drafts):
        if isinstance(draft, int):
            tokens.append(draft)
            qs.append(None)
            continue
        noise = seeded_noise.exponentials(seed, FIRST_POSITION + i, seeded_noise.DRAFT, VOCAB)
        tokens.append(int(torch.argmax(draft.dense(VOCAB) / noise).item()))
        qs.append(draft)
    return tokens, qs


def _run(
    sampler: Sampler, drafts: list[Draft], n: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> list[tuple[int, ...]]:
    """The emitted tokens of n verify calls with seeds 0..n-1."""
    outputs = []
    for seed in range(n):
        tokens, qs = _draw_drafts(drafts, seed)
        request = VerifyRequest(
            logits=LOGITS[: len(drafts) + 1],
            draft_token_ids=tokens,
            draft_q=qs,
            first_position=FIRST_POSITION,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
        )
        result = sampler(request)
        assert len(result.token_ids) == result.num_accepted + 1
        assert result.token_ids[: result.num_accepted] == tokens[: result.num_accepted]
        outputs.append(tuple(result.token_ids))
    return outputs


def _dense(draft: Draft) -> torch.Tensor:  # [vocab] float64
    if isinstance(draft, int):
        return torch.nn.functional.one_hot(torch.tensor(draft), VOCAB).to(torch.float64)
    return draft.dense(VOCAB)


def _speculative_law(p: torch.Tensor, drafts: list[Draft]) -> dict[tuple[int, ...], float]:
    """Exact probability of each possible output of one verify call.

    p: [num_drafts + 1, vocab]. Draft i is accepted with joint probability min(p_i, q_i)(x); a
    rejection followed by correction y has probability max(0, p_i - q_i)(y); the bonus is drawn from p.
    """
    law: dict[tuple[int, ...], float] = {}
    accepted: dict[tuple[int, ...], float] = {(): 1.0}
    for i, draft in enumerate(drafts):
        q = _dense(draft)
        correction = torch.clamp(p[i] - q, min=0.0).tolist()
        both = torch.minimum(p[i], q).tolist()
        for prefix, mass in accepted.items():
            law.update({prefix + (y,): mass * r for y, r in enumerate(correction) if r > 0})
        accepted = {prefix + (x,): mass * m for prefix, mass in accepted.items() for x, m in enumerate(both) if m > 0}
    bonus = p[len(drafts)].tolist()
    for prefix, mass in accepted.items():
        law.update({prefix + (y,): mass * r for y, r in enumerate(bonus) if r > 0})
    return law


def _product_law(*rows: torch.Tensor) -> dict[tuple[int, ...], float]:
    law: dict[tuple[int, ...], float] = {(): 1.0}
    for row in rows:
        law = {k + (y,): mass * r for k, mass in law.items() for y, r in enumerate(row.tolist()) if r > 0}
    return law


def _p_value(samples: list[tuple[int, ...]], law: dict[tuple[int, ...], float]) -> float:
    """Chi-square goodness of fit; an outcome the law rules out gives 0.

    Cells are grouped, smallest expectation first, until each group expects MIN_EXPECTED_COUNT: the
    grouping depends only on the law, so the test stays valid.
    """
    counts = Counter(samples)
    if any(outcome not in law for outcome in counts):
        return 0.0
    n = len(samples)
    observed: list[float] = []
    expected: list[float] = []
    group_observed = group_expected = 0.0
    for outcome in sorted(law, key=law.__getitem__):
        group_observed += counts[outcome]
        group_expected += n * law[outcome]
        if group_expected >= MIN_EXPECTED_COUNT:
            observed.append(group_observed)
            expected.append(group_expected)
            group_observed = group_expected = 0.0
    observed[-1] += group_observed
    expected[-1] += group_expected
    scale = n / sum(expected)  # the law sums to 1 only up to rounding
    return float(stats.chisquare(observed, [e * scale for e in expected]).pvalue)


def _complete(outputs: list[tuple[int, ...]], p: torch.Tensor) -> list[tuple[int, ...]]:
    """Extend each output to every row of p with direct samples from p (what later rounds emit,
    since the rows here do not depend on earlier tokens); independent of the verifier's streams."""
    generator = torch.Generator().manual_seed(2**20)
    completed = []
    for tokens in outputs:
        rest = [int(torch.multinomial(p[i], 1, generator=generator).item()) for i in range(len(tokens), p.shape[0])]
        completed.append(tokens + tuple(rest))
    return completed


def _first_token_p_value(sampler: Sampler, draft: Draft, n: int = 8000) -> float:
    outputs = _run(sampler, [draft], n)
    return _p_value([tokens[:1] for tokens in outputs], _product_law(TARGET_ROWS[0]))


def _every_position_p_values(sampler: Sampler, case: dict, n: int = 20000) -> dict[str, float]:
    """p-values for each position's marginal and the first two tokens' joint, after completion."""
    p = target_probs(LOGITS[: len(case["drafts"]) + 1], case["temperature"], case["top_k"], case["top_p"])
    sequences = _complete(_run(sampler, n=n, **case), p)
    p_values = {
        f"position {i}": _p_value([s[i : i + 1] for s in sequences], _product_law(p[i])) for i in range(p.shape[0])
    }
    p_values["first two jointly"] = _p_value([s[:2] for s in sequences], _product_law(p[0], p[1]))
    return p_values


MIXED = dict(drafts=[SPARSE_Q, NGRAM_DRAFT, DENSE_Q], temperature=1.0, top_k=0, top_p=1.0)
# At temperature 0.7, top-k 4 and top-p 0.9, token 4 is outside p's support at the first position and
# tokens 0 and 5 at the second: drafts of them must always be rejected.
FILTERED = dict(drafts=[_q([1, 2, 4], [0.3, 0.3, 0.4]), DENSE_Q, 3], temperature=0.7, top_k=4, top_p=0.9)
CASES = {"mixed drafts at temperature 1": MIXED, "mixed drafts with temperature, top-k and top-p": FILTERED}

DRAFT_KINDS = {"dense q": DENSE_Q, "sparse q": SPARSE_Q, "one-hot q": ONE_HOT_Q, "one-hot without q": NGRAM_DRAFT}


@pytest.mark.parametrize("draft", DRAFT_KINDS.values(), ids=DRAFT_KINDS.keys())
def test_first_token_is_distributed_as_target_for_every_kind_of_draft(draft: Draft) -> None:
    """A single draft (K=1): the first emitted token is distributed as p (alpha 1e-3)."""
    assert _first_token_p_value(verify, draft) >= ALPHA


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_verify_output_follows_the_exact_speculative_sampling_law(case: dict) -> None:
    """Three drafts: the whole output (accepted prefix plus correction or bonus) has exactly the law
    of speculative sampling, outcome by outcome (alpha 1e-3)."""
    p = target_probs(LOGITS[:4], case["temperature"], case["top_k"], case["top_p"])
    outputs = _run(verify, n=20000, **case)
    assert set(outputs) <= set(_speculative_law(p, case["drafts"])), "an impossible output was emitted"
    assert _p_value(outputs, _speculative_law(p, case["drafts"])) >= ALPHA


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_every_emitted_position_is_distributed_as_target(case: dict) -> None:
    """Three drafts, output completed with direct samples from p: each position i is distributed as
    p_i and the first two tokens as p_0 x p_1, i.e. speculation is lossless (alpha 1e-3 per check)."""
    p_values = _every_position_p_values(verify, case)
    assert all(value >= ALPHA for value in p_values.values()), p_values


def _flawed_verify(request: VerifyRequest, flaw: str | None) -> VerifyResult:
    """The production sampling loop, rewritten with `flaw` (None: faithful)."""
    probs = target_probs(request.logits, request.temperature, request.top_k, request.top_p)
    out: list[int] = []
    for i, draft in enumerate(request.draft_token_ids):
        position = request.first_position + i
        q = request.draft_q[i]
        if q is None:
            out.append(sample_target(probs[i], request.seed, position))
            if out[-1] != draft:
                return VerifyResult(i, out)
            continue
        q_dense = q.dense(VOCAB)
        p_x, q_x = probs[i, draft].item(), q_dense[draft].item()
        u = seeded_noise.uniform(request.seed, position, seeded_noise.ACCEPT)
        if (u < p_x) if flaw == "accept ignores q" else (u * q_x < p_x):
            out.append(draft)
            continue
        residual = probs[i] if flaw == "residual ignores q" else torch.clamp(probs[i] - q_dense, min=0.0)
        noise = seeded_noise.exponentials(request.seed, position, seeded_noise.RESIDUAL, VOCAB)
        out.append(int(torch.argmax(residual / noise).item()))
        return VerifyResult(i, out)
    out.append(sample_target(probs[-1], request.seed, request.first_position + len(request.draft_token_ids)))
    return VerifyResult(len(request.draft_token_ids), out)


def _accept_ignores_q(request: VerifyRequest) -> VerifyResult:
    return _flawed_verify(request, "accept ignores q")


def _residual_ignores_q(request: VerifyRequest) -> VerifyResult:
    return _flawed_verify(request, "residual ignores q")


FLAWED = {
    "accepts with probability p(x) instead of min(1, p(x) / q(x))": _accept_ignores_q,
    "corrects from p instead of normalize(max(0, p - q))": _residual_ignores_q,
}


def test_flawed_copy_without_a_flaw_matches_production_token_for_token() -> None:
    """So the broken samplers below differ from production only by their flaw."""
    for case in CASES.values():
        assert _run(lambda r: _flawed_verify(r, None), n=500, **case) == _run(verify, n=500, **case)


@pytest.mark.parametrize("sampler", FLAWED.values(), ids=FLAWED.keys())
@pytest.mark.parametrize("draft", [DENSE_Q, SPARSE_Q], ids=["dense q", "sparse q"])
def test_sampler_that_ignores_q_fails_the_first_token_test(sampler: Sampler, draft: Draft) -> None:
    assert _first_token_p_value(sampler, draft) < ALPHA


@pytest.mark.parametrize("sampler", FLAWED.values(), ids=FLAWED.keys())
def test_sampler_that_ignores_q_fails_the_every_position_test(sampler: Sampler) -> None:
    p_values = _every_position_p_values(sampler, MIXED)
    assert min(p_values.values()) < ALPHA, p_values


def _greedy_request(logits: torch.Tensor, drafts: list[int]) -> VerifyRequest:
    return VerifyRequest(logits, drafts, [None] * len(drafts), FIRST_POSITION, 0.0, 0, 1.0, seed=0)


def test_greedy_appends_bonus_argmax_when_every_draft_matches() -> None:
    best = torch.argmax(LOGITS, dim=-1).tolist()
    result = verify(_greedy_request(LOGITS, best[:3]))
    assert (result.num_accepted, result.token_ids) == (3, best)


def test_greedy_replaces_first_mismatch_with_argmax_and_drops_later_drafts() -> None:
    best = torch.argmax(LOGITS, dim=-1).tolist()
    drafts = [best[0], (best[1] + 1) % VOCAB, best[2]]
    result = verify(_greedy_request(LOGITS, drafts))
    assert (result.num_accepted, result.token_ids) == (1, [best[0], best[1]])


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    matches=st.lists(st.booleans(), max_size=5),
    wrong_offset=st.integers(1, VOCAB - 1),
)
def test_greedy_accepts_longest_prefix_equal_to_argmax(seed: int, matches: list[bool], wrong_offset: int) -> None:
    logits = torch.randn(len(matches) + 1, VOCAB, generator=torch.Generator().manual_seed(seed))
    best = torch.argmax(logits, dim=-1).tolist()
    drafts = [b if match else (b + wrong_offset) % VOCAB for b, match in zip(best, matches)]
    accepted = matches.index(False) if False in matches else len(matches)
    result = verify(_greedy_request(logits, drafts))
    assert result.num_accepted == accepted
    assert result.token_ids == best[: accepted + 1]
