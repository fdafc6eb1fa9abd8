"""Speculative sampling through the whole engine has exactly the target's distribution, and seeds reproduce.

The distribution test enumerates every three-token continuation of a tiny-vocabulary target (8
tokens, 512 outcomes), computes each one's exact probability from transformers' forward pass, and
compares the engine's samples with a chi-square goodness-of-fit test at false-alarm rate ALPHA = 1e-3
(cells with expected count under 5 are pooled). Seeds are fixed, so the outcome is deterministic per
run. Three tokens leave room for K = 2 drafts in the first round (the token after the drafts counts
against max_tokens too), so both draft positions are proposed, and rounds that accept the first draft
and reject the second roll a partial acceptance back.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chisquare
from tiny_checkpoints import write_perturbed_copy, write_tiny_checkpoint
from transformers import AutoModelForCausalLM

import verifier_svc.verifier
from splitspec import LLM, SamplingParams, SpeculationStats
from verifier_svc.rejection_sampler import VerifyResult, verify

ALPHA = 1e-3
VOCAB = 8
NUM_SAMPLES = 4000
LENGTH = 3
PROMPT = [3, 5, 3, 5, 3]  # repeats, so prompt lookup drafts two tokens too


@pytest.fixture(scope="module")
def tiny_vocab_target(tmp_path_factory):
    return write_tiny_checkpoint(
        tmp_path_factory.mktemp("vocab8"),
        vocab_size=VOCAB,
        hidden_size=32,
        num_heads=2,
        num_kv_heads=1,
        seed=3,
        init_std=0.15,
    )


@pytest.fixture(scope="module")
def tiny_vocab_draft(tmp_path_factory, tiny_vocab_target):
    return write_perturbed_copy(tiny_vocab_target, tmp_path_factory.mktemp("vocab8_draft"), scale=1.0, seed=5)


@pytest.fixture(scope="module")
def exact_law(tiny_vocab_target) -> dict[tuple[int, ...], float]:
    model = AutoModelForCausalLM.from_pretrained(str(tiny_vocab_target)).eval()
    with torch.no_grad():

        def next_token(prefix: tuple[int, ...]) -> torch.Tensor:
            return torch.softmax(model(torch.tensor([PROMPT + list(prefix)])).logits[0, -1].double(), -1)

        conditionals = {
            prefix: next_token(prefix) for n in range(LENGTH) for prefix in itertools.product(range(VOCAB), repeat=n)
        }
    law = {}
    for outcome in itertools.product(range(VOCAB), repeat=LENGTH):
        p = 1.0
        for i in range(LENGTH):
            p *= conditionals[outcome[:i]][outcome[i]].item()
        law[outcome] = p
    return law


def _sample(llm: LLM, n: int = NUM_SAMPLES) -> tuple[list[tuple[int, ...]], SpeculationStats]:
    """Samples, and the speculation counters of all the requests that drew them together."""
    params = [SamplingParams(temperature=1.0, max_tokens=LENGTH, ignore_eos=True, seed=s) for s in range(n)]
    outs = llm.generate([{"prompt_token_ids": PROMPT}] * n, params, use_tqdm=False)
    total = SpeculationStats()
    for o in outs:
        stats = o.spec_stats
        total.num_draft_tokens += stats.num_draft_tokens
        total.num_accepted_tokens += stats.num_accepted_tokens
        for i, (d, a) in enumerate(zip(stats.drafted_per_position, stats.accepted_per_position)):
            if i == len(total.drafted_per_position):
                total.drafted_per_position.append(0)
                total.accepted_per_position.append(0)
            total.drafted_per_position[i] += d
            total.accepted_per_position[i] += a
    return [tuple(o.outputs[0].token_ids) for o in outs], total


def _assert_both_positions_drafted_and_partly_accepted(stats: SpeculationStats) -> None:
    """Both draft positions were proposed; some rounds accepted both, some accepted the first and
    rejected the second (a partial acceptance rolled back), some rejected the first."""
    drafted, accepted = stats.drafted_per_position, stats.accepted_per_position
    assert len(drafted) == 2 and drafted[1] > 0, f"no second draft position was proposed: {drafted}"
    assert 0 < accepted[1] < accepted[0] < drafted[0], f"drafted {drafted}, accepted {accepted}"


def _p_value(samples: list[tuple[int, ...]], law: dict[tuple[int, ...], float]) -> float:
    n = len(samples)
    counts = {k: 0 for k in law}
    for s in samples:
        counts[s] += 1
    cells = sorted(law, key=law.get, reverse=True)
    observed, expected, pooled_o, pooled_e = [], [], 0, 0.0
    for cell in cells:
        if law[cell] * n >= 5:
            observed.append(counts[cell])
            expected.append(law[cell] * n)
        else:
            pooled_o += counts[cell]
            pooled_e += law[cell] * n
    if pooled_e > 0:
        observed.append(pooled_o)
        expected.append(pooled_e)
    expected = [e * n / sum(expected) for e in expected]
    return chisquare(observed, expected).pvalue


def _spec(method: str, draft) -> dict:
    if method == "ngram":
        return {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 2, "adaptive": False}
    if method == "suffix":  # drafts from the outputs of the other samples, drawn side by side
        return {"method": "suffix", "num_speculative_tokens": 2}
    return {
        "method": "draft_model",
        "model": str(draft),
        "num_speculative_tokens": 2,
        "draft_top_k": 3,
        "adaptive": False,
    }


@pytest.mark.parametrize("method", ["ngram", "draft_model", "suffix"])
def test_speculative_sampling_matches_exact_target_distribution(method, tiny_vocab_target, tiny_vocab_draft, exact_law):
    llm = LLM(str(tiny_vocab_target), speculative_config=_spec(method, tiny_vocab_draft), max_num_seqs=256)
    samples, stats = _sample(llm)
    _assert_both_positions_drafted_and_partly_accepted(stats)
    assert _p_value(samples, exact_law) > ALPHA


def test_adaptive_draft_length_keeps_the_exact_distribution(tiny_vocab_target, tiny_vocab_draft, exact_law):
    spec = dict(_spec("ngram", tiny_vocab_draft), adaptive=True, num_speculative_tokens=4)
    llm = LLM(str(tiny_vocab_target), speculative_config=spec, max_num_seqs=256)
    assert llm.engine.cost_model is not None
    samples, stats = _sample(llm)
    _assert_both_positions_drafted_and_partly_accepted(stats)
    assert _p_value(samples, exact_law) > ALPHA


def test_draft_q_is_sparse_and_drafts_get_accepted(tiny_vocab_target, tiny_vocab_draft):
    llm = LLM(str(tiny_vocab_target), speculative_config=_spec("draft_model", tiny_vocab_draft))
    outs = llm.generate(
        [{"prompt_token_ids": PROMPT}] * 50,
        [SamplingParams(temperature=1.0, max_tokens=6, ignore_eos=True, seed=s) for s in range(50)],
        use_tqdm=False,
    )
    stats = [o.spec_stats for o in outs]
    accepted = sum(s.num_accepted_tokens for s in stats)
    drafted = sum(s.num_draft_tokens for s in stats)
    assert 0 < accepted < drafted, "the distribution test needs both accepted and rejected sparse drafts"


def _accept_every_draft(request) -> VerifyResult:
    """A broken verifier: trusts the draft blindly (q and p both ignored)."""
    if not request.draft_token_ids:
        return verify(request)
    return VerifyResult(len(request.draft_token_ids), list(request.draft_token_ids) + [request.draft_token_ids[-1]])


def test_distribution_test_catches_a_broken_verifier(monkeypatch, tiny_vocab_target, tiny_vocab_draft, exact_law):
    monkeypatch.setattr(verifier_svc.verifier, "verify", _accept_every_draft)
    llm = LLM(str(tiny_vocab_target), speculative_config=_spec("draft_model", tiny_vocab_draft), max_num_seqs=256)
    assert _p_value(_sample(llm)[0], exact_law) < ALPHA


def _seeded_outputs(llm: LLM, prompts: list[list[int]], seeds: list[int]) -> list[list[int]]:
    params = [
        SamplingParams(temperature=0.9, top_p=0.95, top_k=50, max_tokens=24, ignore_eos=True, seed=s) for s in seeds
    ]
    return [
        o.outputs[0].token_ids for o in llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    ]


SEEDED_PROMPTS = [[5, 6, 7, 5, 6, 7, 5], [9, 10], list(range(40, 70)), [11, 12, 11, 12, 11, 12]]


def test_seeded_sampling_is_identical_across_batch_compositions(tiny_llama, tiny_drafts):
    for spec in (
        None,
        {"method": "ngram", "num_speculative_tokens": 3},
        {"method": "draft_model", "model": str(tiny_drafts["llama"]), "num_speculative_tokens": 3},
    ):
        llm = LLM(str(tiny_llama), speculative_config=spec)
        together = _seeded_outputs(llm, SEEDED_PROMPTS, [1, 2, 3, 4])
        alone = [_seeded_outputs(llm, [p], [s])[0] for p, s in zip(SEEDED_PROMPTS, [1, 2, 3, 4])]
        shuffled = _seeded_outputs(llm, SEEDED_PROMPTS[::-1] + [[7, 7, 7]], [4, 3, 2, 1, 99])[:4][::-1]
        assert together == alone == shuffled, f"seeded output changed with the batch for {spec}"


def test_seeded_sampling_is_identical_with_and_without_ngram_speculation(tiny_llama):
    plain = _seeded_outputs(LLM(str(tiny_llama)), SEEDED_PROMPTS, [1, 2, 3, 4])
    for k in (1, 3, 5):
        llm = LLM(str(tiny_llama), speculative_config={"method": "ngram", "num_speculative_tokens": k})
        assert _seeded_outputs(llm, SEEDED_PROMPTS, [1, 2, 3, 4]) == plain
