"""Adaptive draft length: draft only while expected tokens per second go up."""

from __future__ import annotations

import time

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from splitspec.adaptive_k import AcceptanceEstimate, PassCostModel, PositionalAcceptance, RoundTrip, choose_num_drafts

# shaped like the default model on 2 CPU cores: the first extra token is dear, later ones cheap
CPU_LIKE = PassCostModel({1: 0.040, 2: 0.062, 3: 0.074, 4: 0.088, 6: 0.093, 8: 0.094, 16: 0.10, 32: 0.14, 64: 0.20})
FLAT = PassCostModel({1: 0.05, 64: 0.05})


def test_low_acceptance_drafts_nothing():
    assert choose_num_drafts([0.3], [5], 1, CPU_LIKE) == [0]


def test_high_acceptance_drafts_the_maximum():
    assert choose_num_drafts([0.8], [5], 1, CPU_LIKE) == [5]


def test_several_drafts_are_chosen_even_when_the_first_alone_would_not_pay():
    steep_then_flat = PassCostModel({1: 1.0, 2: 2.0, 6: 2.05})
    assert choose_num_drafts([0.9], [1], 1, steep_then_flat) == [0]  # one draft alone loses ...
    assert choose_num_drafts([0.9], [5], 1, steep_then_flat) == [5]  # ... five together win


def test_free_extra_tokens_are_always_used():
    assert choose_num_drafts([0.2, 0.9], [4, 4], 2, FLAT) == [4, 4]


def test_limits_are_respected():
    assert choose_num_drafts([0.99, 0.99], [2, 0], 2, FLAT) == [2, 0]


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8), st.integers(0, 6))
def test_chosen_drafts_never_lower_expected_throughput(rates, limit):
    ks = choose_num_drafts(rates, [limit] * len(rates), len(rates), CPU_LIKE)
    expected = sum(sum(r**j for j in range(k + 1)) for r, k in zip(rates, ks))
    assert all(0 <= k <= limit for k in ks)
    assert expected / CPU_LIKE.cost(len(rates) + sum(ks)) >= len(rates) / CPU_LIKE.cost(len(rates)) - 1e-12


def test_a_slow_trip_to_the_proposer_makes_drafting_not_pay():
    assert choose_num_drafts([0.8], [5], 1, CPU_LIKE) == [5]
    assert choose_num_drafts([0.8], [5], 1, CPU_LIKE, round_trip=RoundTrip(draft_s=0.1)) == [0]


def test_a_slow_link_to_the_verifier_makes_longer_drafts_pay():
    """The link is paid once a round, so a round yielding more tokens spreads it thinner."""
    assert choose_num_drafts([0.45], [8], 1, CPU_LIKE) == [0]
    assert choose_num_drafts([0.45], [8], 1, CPU_LIKE, round_trip=RoundTrip(link_s=0.2))[0] > 0


def test_drafting_time_per_token_shortens_the_draft():
    fast, slow = RoundTrip(draft_s=0.002), RoundTrip(draft_s=0.002, draft_token_s=0.02)
    assert choose_num_drafts([0.7], [8], 1, FLAT, round_trip=fast) == [8]
    assert 0 < choose_num_drafts([0.7], [8], 1, FLAT, round_trip=slow)[0] < 8


def test_drafting_ahead_hides_the_wait_for_drafts_that_are_accepted():
    trip = RoundTrip(draft_s=0.065)
    assert choose_num_drafts([0.8], [5], 1, CPU_LIKE, round_trip=trip) == [0]
    ahead = RoundTrip(draft_s=0.065, ahead_rate=0.8)
    assert ahead.seconds(2) == pytest.approx(0.065 * (1 - 0.8**3))
    assert choose_num_drafts([0.8], [5], 1, CPU_LIKE, round_trip=ahead) == [5]


@given(st.floats(0.0, 1.0), st.integers(0, 8), st.floats(0.0, 0.2), st.floats(0.0, 0.2), st.floats(0.0, 0.02))
def test_the_chosen_k_never_lowers_tokens_per_second_with_the_round_trip(rate, limit, link_s, draft_s, token_s):
    trip = RoundTrip(link_s=link_s, draft_s=draft_s, draft_token_s=token_s)
    (k,) = choose_num_drafts([rate], [limit], 1, CPU_LIKE, round_trip=trip)
    expected = sum(rate**j for j in range(k + 1))
    assert 0 <= k <= limit
    assert expected / (CPU_LIKE.cost(1 + k) + trip.seconds(k)) >= 1 / (CPU_LIKE.cost(1) + trip.seconds(0)) - 1e-12


def test_cost_interpolates_and_extrapolates():
    model = PassCostModel({1: 1.0, 3: 2.0})
    assert model.cost(1) == 1.0 and model.cost(2) == pytest.approx(1.5) and model.cost(5) == pytest.approx(3.0)


def test_estimate_drops_after_rejections_and_drifts_back_when_idle():
    estimate = AcceptanceEstimate()
    prior = estimate.rate
    for _ in range(3):
        estimate.update(drafted=5, accepted=0)
    low = estimate.rate
    assert low < 0.5 < prior
    for _ in range(10):
        estimate.update(drafted=0, accepted=0)
    assert estimate.rate < 0.6  # probing a poor drafter again is rare ...
    for _ in range(150):
        estimate.update(drafted=0, accepted=0)
    assert estimate.rate > 0.7  # ... but it happens


def test_a_tree_s_tokens_are_priced_by_how_often_each_was_on_the_kept_path():
    """Trees whose first token is always wrong and whose kept path runs through its sibling (index 1)
    and that one's descendants (4, 6): the chain's estimate, by position, prices the first three tokens
    as sure; the per-index one prices what was kept."""
    acceptance = PositionalAcceptance()
    assert acceptance.node_gains(5) == pytest.approx(acceptance.chain(5))  # nothing seen: the chain's
    for _ in range(30):
        acceptance.update(8, 3, path=[1, 4, 6])
    gains = acceptance.node_gains(8)
    assert min(gains[1], gains[4], gains[6]) > 0.8  # the prior, the chain's estimate, weighs 2 rounds of ~10
    assert max(gains[j] for j in (0, 2, 3, 5, 7)) < 0.2
    assert acceptance.chain(8)[0] > 0.9  # what a chain's estimate would have said of index 0


def test_a_chain_recorded_as_a_tree_gives_its_positions_the_chain_s_estimate():
    chain, tree = PositionalAcceptance(), PositionalAcceptance()
    for accepted in [3, 1, 4, 4, 2, 0, 4, 3] * 4:
        chain.update(4, accepted)
        tree.update(4, accepted, path=list(range(accepted)))
    assert tree.node_gains(4) == pytest.approx(chain.node_gains(4))
    assert chain.node_gains(4) == pytest.approx(chain.chain(4), abs=0.15)


class SleepingRunner:
    """A runner whose pass of n tokens takes a known 20 ms + 5 ms * n, to check what calibration reads."""

    max_model_len = 512
    device = torch.device("cpu")

    def forward(self, inputs):
        time.sleep(0.020 + 0.005 * sum(len(i.token_ids) for i in inputs))

    def truncate(self, seq_id: str, length: int) -> None:
        pass

    def free(self, seq_id: str) -> None:
        pass


def test_calibration_measures_what_a_pass_costs():
    model = PassCostModel.calibrate(SleepingRunner(), max_rows=8, repeats=3)
    assert model.rows == [1, 2, 3, 4, 5, 6, 7, 8]
    # a sleep never ends early, and ends late by the machine's load: bounds below tight, above loose
    for rows, seconds in zip(model.rows, model.seconds):
        assert 0.020 + 0.005 * rows - 1e-4 <= seconds <= 0.020 + 0.005 * rows + 0.015
    slope = (model.seconds[-1] - model.seconds[0]) / (model.rows[-1] - model.rows[0])
    assert slope == pytest.approx(0.005, abs=0.002), "what one more row costs"


def test_calibration_runs_on_a_real_runner_and_gives_back_every_block(tiny_llama):
    from splitspec.config import RunnerConfig
    from splitspec.models.loader import load_runner

    runner = load_runner(tiny_llama, RunnerConfig(kv_cache_memory_bytes=1 << 20))
    model = PassCostModel.calibrate(runner, max_rows=8, repeats=1)
    assert model.rows == [1, 2, 3, 4, 5, 6, 7, 8] and all(s > 0 for s in model.seconds)
    assert runner.num_free_blocks == runner.allocator.num_blocks


def test_passes_measured_while_serving_move_the_curve_toward_them():
    model = PassCostModel({1: 0.040, 4: 0.088, 16: 0.10})
    for _ in range(200):  # contexts grew: every four-row pass now takes 0.2 s
        model.observe(4, 0.2)
    assert model.cost(4) == pytest.approx(0.2, rel=0.01)
    assert model.cost(1) == pytest.approx(0.040) and model.cost(16) >= model.cost(4), "monotone, the rest unmoved"
    model.observe(64, 0.5)  # larger than any calibrated pass: a point of its own
    assert model.rows[-1] == 64 and model.cost(64) == pytest.approx(0.5)


@given(st.lists(st.tuples(st.integers(1, 200), st.floats(0.0, 1.0)), max_size=50))
def test_the_curve_stays_monotone_and_non_negative_whatever_is_observed(passes):
    model = PassCostModel({1: 0.040, 4: 0.088, 16: 0.10})
    for rows, seconds in passes:
        model.observe(rows, seconds)
    assert len(model.rows) == len(model.seconds)
    assert all(0 <= a <= b for a, b in zip(model.seconds, model.seconds[1:]))


class _HeldCurve(PassCostModel):
    def observe(self, rows: int, seconds: float, weight: float = 0.05) -> None:
        pass


def test_in_process_a_drafter_slower_than_its_drafts_win_is_priced_out_and_output_is_unchanged(tiny_llama):
    """The engine times its proposer: the target drafting for itself (every draft accepted) keeps
    drafting, and the same drafter made to take 0.2 s a call (a pass of the tiny target takes a few ms)
    stops after its first timed calls (the first two are dropped as warm-up)."""
    from splitspec import LLM, SamplingParams

    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    prompt = [{"prompt_token_ids": [5, 6, 7, 8, 9, 10]}]
    spec = {"method": "draft_model", "model": str(tiny_llama), "num_speculative_tokens": 4}
    plain = LLM(str(tiny_llama)).generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids
    fast = LLM(str(tiny_llama), speculative_config=spec)
    slow = LLM(str(tiny_llama), speculative_config=spec)
    for llm in (fast, slow):  # 10 ms passes, held: the tiny target's own are as cheap as its drafts
        llm.engine.cost_model = _HeldCurve({1: 0.010, 16: 0.0108})
    propose = slow.engine.proposer.propose

    def slow_propose(requests):
        time.sleep(0.2)
        return propose(requests)

    slow.engine.proposer.propose = slow_propose
    (fast_out,) = fast.generate(prompt, params, use_tqdm=False)
    (slow_out,) = slow.generate(prompt, params, use_tqdm=False)
    assert fast_out.outputs[0].token_ids == slow_out.outputs[0].token_ids == plain
    assert fast_out.spec_stats.num_accepted_tokens > 10
    assert slow_out.spec_stats.num_draft_tokens <= 16, "priced out after its first timed calls"


def test_a_timer_drops_its_warm_up_samples():
    from splitspec.adaptive_k import Ewma

    timer = Ewma(weight=0.5, warm_up=2)
    timer.add(5.0)
    timer.add(4.0)
    assert timer.value is None
    timer.add(0.1)
    timer.add(0.3)
    assert timer.value == pytest.approx(0.2)
