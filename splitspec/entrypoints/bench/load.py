"""Serving under load, as users measure it: a closed-loop concurrency sweep (n requests at once) and an
open-loop request-rate sweep (Poisson arrivals, as vLLM's serving benchmark), each configuration with
its K=0 beside it, reporting throughput, TTFT and time per output token per workload."""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace

from splitspec.entrypoints.bench.runners import BenchPrompt
from splitspec.entrypoints.bench.timing import RequestTiming, percentile


def warm_up(bench_prompts: list[BenchPrompt]) -> list[BenchPrompt]:
    """Prompts to run untimed before the timed ones: each one's tokens reversed. They have the timed
    prompts' lengths and count, so their passes go through the same batch and prompt-length shapes and
    pay the one-time costs there (a CUDA graph captured per pass shape bucket, a kernel variant compiled,
    oneDNN's first calls), while no drafter's memory (suffix decoding's past answers) learns a timed
    prompt's answer from them."""
    return [replace(bp, token_ids=bp.token_ids[::-1]) for bp in bench_prompts]


def poisson_arrivals(rate: float, count: int, seed: int) -> list[float]:
    """Seconds after the start at which `count` requests arrive, at `rate` per second on average."""
    rng, now, out = random.Random(seed), 0.0, []
    for _ in range(count):
        now += rng.expovariate(rate)
        out.append(now)
    return out


def serving_row(
    config: str, mode: str, level: float, results: list[RequestTiming], wall: float, reference: dict[str, list[int]]
) -> dict:
    """One configuration at one load level. reference: prompt name -> K=0's greedy output."""
    tokens = sum(t.num_tokens for t in results)
    ttft = [t.ttft for t in results]
    tpot = [t.tpot for t in results if t.num_tokens > 1]
    by_workload = {}
    for workload in dict.fromkeys(t.workload for t in results):
        chosen = [t for t in results if t.workload == workload]
        w_tpot = [t.tpot for t in chosen if t.num_tokens > 1]
        by_workload[workload] = {
            "requests": len(chosen),
            "tokens": sum(t.num_tokens for t in chosen),
            "tpot_p50_s": percentile(w_tpot, 50),
            "tpot_p99_s": percentile(w_tpot, 99),
        }
    checked = [t.token_ids == reference[t.prompt] for t in results if t.prompt in reference]
    return {
        "config": config,
        "mode": mode,
        "level": level,
        "requests": len(results),
        "tokens": tokens,
        "wall_s": wall,
        "throughput_tokens_per_s": tokens / wall if wall else 0.0,
        "mean_latency_s": statistics.fmean(t.elapsed for t in results) if results else 0.0,
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p99_s": percentile(ttft, 99),
        "tpot_p50_s": percentile(tpot, 50),
        "tpot_p99_s": percentile(tpot, 99),
        "matches_k0": f"{sum(checked)}/{len(checked)}" if checked else "-",
        "by_workload": by_workload,
    }


def load_sweep(
    configs: list,
    bench_prompts: list[BenchPrompt],
    max_tokens: int,
    concurrency: tuple[int, ...],
    request_rates: tuple[float, ...],
    num_requests: int,
    seed: int,
    reference: dict[str, list[int]],
    log: Callable[[str], None] = lambda m: print(f"bench: {m}", file=sys.stderr, flush=True),
) -> list[dict]:
    """Every configuration at each concurrency (that many requests at once), then at each request rate
    (num_requests arriving as a Poisson process), each level after an untimed warm-up run of the same
    shape (see warm_up)."""
    rows = []
    levels = [("concurrency", float(n), n, None) for n in concurrency]
    for rate in request_rates:
        levels.append(("request_rate", rate, num_requests, poisson_arrivals(rate, num_requests, seed)))
    for mode, level, count, arrivals in levels:
        batch = [bench_prompts[i % len(bench_prompts)] for i in range(count)]
        for c in configs:
            log(f"{mode} {level:g}: {c.name}")
            c.run(warm_up(batch), max_tokens, arrivals)
            start = time.perf_counter()
            results = c.run(batch, max_tokens, arrivals)
            wall = time.perf_counter() - start
            rows.append(serving_row(c.name, mode, level, results, wall, reference))
    return rows


def baseline_of(config: str) -> str:
    """The K=0 row a configuration is compared with: the same path (in-process, or through a gateway)."""
    return "gateway K=0" if config.startswith("gateway") else "splitspec K=0"


def format_load_table(rows: list[dict]) -> str:
    found = {(r["mode"], r["level"], r["config"]): r for r in rows}
    header = (
        f"{'load':<20}{'configuration':<30}{'tok/s':>8}{'x K=0':>7}{'TTFT p50':>10}{'p99':>8}"
        f"{'TPOT p50':>10}{'p99':>8}{'=K0':>7}"
    )
    lines = ["", header, "-" * len(header)]
    for r in rows:
        base = found.get((r["mode"], r["level"], baseline_of(r["config"])))
        ratio = r["throughput_tokens_per_s"] / base["throughput_tokens_per_s"] if base and base["tokens"] else 0.0
        load = f"{r['level']:g} {'streams' if r['mode'] == 'concurrency' else 'req/s'}"
        lines.append(
            f"{load:<20}{r['config']:<30}{r['throughput_tokens_per_s']:>8.1f}{ratio:>7.2f}"
            f"{r['ttft_p50_s'] * 1000:>10.0f}{r['ttft_p99_s'] * 1000:>8.0f}"
            f"{r['tpot_p50_s'] * 1000:>10.1f}{r['tpot_p99_s'] * 1000:>8.1f}{r['matches_k0']:>7}"
        )
    return "\n".join(lines)
