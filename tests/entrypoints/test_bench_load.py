"""`splitspec bench` under load: Poisson arrivals, the serving figures, K=0 beside each row."""

from __future__ import annotations

import statistics
import time

import pytest

from splitspec import LLM
from splitspec.entrypoints.bench.load import format_load_table, load_sweep, poisson_arrivals, serving_row
from splitspec.entrypoints.bench.runners import BenchPrompt, SplitspecInProcess
from splitspec.entrypoints.bench.timing import RequestTiming
from splitspec.entrypoints.bench.workloads import Prompt


def test_poisson_arrivals_are_seeded_increasing_and_at_the_rate():
    arrivals = poisson_arrivals(4.0, 4000, seed=1)
    assert arrivals == poisson_arrivals(4.0, 4000, seed=1) != poisson_arrivals(4.0, 4000, seed=2)
    gaps = [b - a for a, b in zip([0.0, *arrivals], arrivals)]
    assert min(gaps) > 0
    assert statistics.fmean(gaps) == pytest.approx(0.25, rel=0.05)
    assert statistics.stdev(gaps) == pytest.approx(0.25, rel=0.08), "exponential gaps: sd equals the mean"


def _timing(config: str, prompt: str, start: float, arrivals: list[tuple[float, int]], tokens: list[int]):
    timing = RequestTiming(config, prompt, "chat", start, list(arrivals))
    timing.token_ids = tokens
    return timing


def test_a_row_reports_ttft_and_time_per_output_token_from_each_request_s_arrival():
    # arrived at 1.0, first token at 1.5, then 4 more tokens by 2.5: TTFT 0.5 s, TPOT 0.25 s
    late = _timing("c", "p1", 1.0, [(1.5, 1), (2.0, 2), (2.5, 2)], [1, 2, 3, 4, 5])
    early = _timing("c", "p2", 0.0, [(0.1, 1), (0.3, 1)], [9, 9])
    row = serving_row("c", "request_rate", 2.0, [late, early], wall=2.5, reference={"p1": [1, 2, 3, 4, 5], "p2": [9]})
    assert row["tokens"] == 7 and row["throughput_tokens_per_s"] == pytest.approx(7 / 2.5)
    assert sorted([row["ttft_p50_s"], row["ttft_p99_s"]]) == pytest.approx([0.1, 0.5])
    assert row["tpot_p99_s"] == pytest.approx(0.25) and row["tpot_p50_s"] in (pytest.approx(0.2), pytest.approx(0.25))
    assert row["matches_k0"] == "1/2"
    assert row["by_workload"]["chat"]["requests"] == 2


def test_each_row_is_compared_with_the_k0_of_its_own_path():
    def row(config: str, tok_s: float) -> dict:
        return {"config": config, "mode": "concurrency", "level": 4.0, "tokens": 1, "throughput_tokens_per_s": tok_s,
                "ttft_p50_s": 0, "ttft_p99_s": 0, "tpot_p50_s": 0, "tpot_p99_s": 0, "matches_k0": "-"}  # fmt: skip

    table = format_load_table(
        [row("splitspec K=0", 10), row("splitspec ngram", 15), row("gateway K=0", 20), row("gateway ngram", 10)]
    )
    ratios = {line[20:50].strip(): line.split()[-6] for line in table.splitlines()[3:]}
    assert ratios == {
        "splitspec K=0": "1.00",
        "splitspec ngram": "1.50",
        "gateway K=0": "1.00",
        "gateway ngram": "0.50",
    }


def test_in_process_requests_arrive_on_time_and_wait_for_none_before_their_arrival(tiny_llama):
    llm = LLM(str(tiny_llama))
    prompts = [BenchPrompt(Prompt("chat", f"p{i}", ""), [5, 6, 7, 8 + i]) for i in range(3)]
    runner = SplitspecInProcess("splitspec K=0", llm)
    start = time.perf_counter()
    timings = runner.run(prompts, 8, arrivals=[0.0, 0.3, 0.6])
    assert [t.start - start for t in timings] == pytest.approx([0.0, 0.3, 0.6], abs=0.02)
    assert all(t.num_tokens == 8 and t.arrivals[0][0] >= t.start for t in timings)
    assert time.perf_counter() - start >= 0.6
    rows = load_sweep([runner], prompts, 8, (2,), (20.0,), 3, 0, {t.prompt: t.token_ids for t in timings}, print)
    assert [(r["mode"], r["level"], r["requests"], r["matches_k0"]) for r in rows] == [
        ("concurrency", 2.0, 2, "2/2"),
        ("request_rate", 20.0, 3, "3/3"),
    ]


def test_the_chart_is_a_png_with_a_panel_per_kind_of_load(tmp_path):
    from PIL import Image

    from splitspec.entrypoints.bench.chart import write_load_chart

    rows = [
        {"config": c, "mode": m, "level": level, "throughput_tokens_per_s": tok_s}
        for c in ("splitspec K=0", "splitspec ngram K=10")
        for m, levels in (("concurrency", (1.0, 4.0, 16.0)), ("request_rate", (0.5, 2.0)))
        for level, tok_s in zip(levels, (20.0, 60.0, 95.0))
    ]
    one = write_load_chart([r for r in rows if r["mode"] == "concurrency"], tmp_path / "one.png", "t")
    two = write_load_chart(rows, tmp_path / "two.png", "t")
    assert write_load_chart([], tmp_path / "none.png", "t") is None and not (tmp_path / "none.png").exists()
    with Image.open(one) as a, Image.open(two) as b:
        assert a.format == b.format == "PNG"
        assert b.width > 1.8 * a.width and b.height == a.height
