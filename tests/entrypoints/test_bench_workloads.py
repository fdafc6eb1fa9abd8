"""Benchmark prompts come from real text on the machine and are chosen deterministically by seed."""

from __future__ import annotations

import pytest

from splitspec.entrypoints.bench.timing import RequestTiming, percentile, summarise
from splitspec.entrypoints.bench.workloads import DOCUMENT_FACTS, WORKLOADS, build_prompts, training_prompts
from splitspec.errors import SplitspecError


def test_same_seed_gives_the_same_prompts_and_another_seed_does_not():
    a = build_prompts(list(WORKLOADS), 3, seed=0)
    assert a == build_prompts(list(WORKLOADS), 3, seed=0)
    assert a != build_prompts(list(WORKLOADS), 3, seed=1)


def test_every_workload_yields_nonempty_prompts():
    prompts = build_prompts(list(WORKLOADS), 2, seed=0)
    assert {p.workload.removesuffix(" again") for p in prompts} == set(WORKLOADS)  # repeats, then repeats again
    assert all(len(p.text) > 40 for p in prompts)
    code = [p for p in prompts if p.workload == "code_edit"]
    assert all("def " in p.text for p in code)
    # only the json workload's answers are held to a schema
    assert {p.workload for p in prompts if p.structured is not None} == {"json"}
    assert all(p.structured.json == DOCUMENT_FACTS for p in prompts if p.workload == "json")


def test_training_prompts_mix_kinds_and_never_include_the_held_out_ones():
    held_out = build_prompts(list(WORKLOADS), 3, seed=0)
    names = {p.name for p in held_out}
    training = training_prompts(400, seed=0, exclude=names)
    assert len(training) == 400 and not names & {p.name for p in training}
    assert not {p.text for p in held_out} & {p.text for p in training}
    assert {p.workload for p in training[:10]} >= {"humaneval", "code_edit", "explain", "summarise", "chat"}
    assert training == training_prompts(400, seed=0, exclude=names)


def test_unknown_workload_is_a_clear_error():
    with pytest.raises(SplitspecError, match="unknown workload"):
        build_prompts(["poetry"], 1, seed=0)


def test_chunked_arrivals_spread_latency_over_their_tokens():
    timing = RequestTiming("c", "p", "w", start=0.0, arrivals=[(0.5, 1), (0.7, 4), (0.8, 1)], rounds=3)
    assert timing.num_tokens == 6 and timing.ttft == 0.5 and timing.elapsed == 0.8
    assert timing.inter_token_latencies() == pytest.approx([0.05] * 4 + [0.1])
    summary = summarise("c", [timing])
    assert summary.tokens_per_s == pytest.approx(6 / 0.8) and summary.mean_tokens_per_round == 2.0
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0


def test_repeated_work_asks_each_task_again_changed_and_as_it_was():
    prompts = build_prompts(["repeats"], 2, seed=0)
    first, again = prompts[:2], prompts[2:]
    assert [p.workload for p in prompts] == ["repeats"] * 2 + ["repeats again"] * 4
    assert [p.text for p in again[1::2]] == [p.text for p in first]
    for changed, task in zip(again[::2], first):
        assert "docstrings" in changed.text and changed.text.split("```")[1] == task.text.split("```")[1]


def test_prompt_names_are_unique_across_workloads():
    """The load sweep finds each prompt's K=0 output by name: two prompts may not share one."""
    prompts = build_prompts([w for w in WORKLOADS if w != "repeats"], 3, seed=0)
    assert len({p.name for p in prompts}) == len(prompts)
