"""Drafting ahead for a rejection, measured (issue 16): direct drafts with a draft model whose first
draft is often rejected, the verifier drafting ahead for every draft accepted only (the default) and
for the first draft's rejection too (`serve-verifier --draft-ahead-rejections 1`), and, with
--tree-width w, the draft model's token trees of the same K, fetched by the verifier too, with drafts
ahead after each tree's main chain (each round hedges inside its one pass rather than with a draft made
ahead); stacks interleaved.

The target is the tests' tiny llama; the draft models are noisy copies of it, closer or further (the
noise scale), so acceptance goes from high to low. Each line gives the wall time for the requests and
the verifier's splitspec_draft_ahead_total: steps that found their draft ready, after every draft
accepted (hit) or after a rejection (hit_after_rejection), and the others (miss).

    python benchmarks/draft_ahead_rejections.py [--scales 0.02,0.05,0.1] [--repeats 2] [--delay-ms 3]
                                                [--tree-width 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from e2e_requests import PROMPTS, generate_concurrently, greedy_request  # noqa: E402
from metrics_scrape import scrape, value  # noqa: E402
from service_stack import free_port, running_stack  # noqa: E402
from tiny_checkpoints import write_perturbed_copy, write_tiny_checkpoint  # noqa: E402

OUTCOMES = ("hit", "hit_after_rejection", "miss")


def measure(
    target: Path, draft: Path, rejections: int, tree_width: int, workdir: Path, args: argparse.Namespace
) -> str:
    """rejections: --draft-ahead-rejections of a stack with direct drafts; tree_width > 1: its drafts are
    trees."""
    metrics_port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    drafts = ("--direct-drafts", "--tree-width", str(tree_width)) if tree_width > 1 else ("--direct-drafts",)
    with running_stack(
        target,
        workdir,
        method="draft_model",
        k=args.k,
        draft_model=draft,
        verifier_args=("--metrics-port", str(metrics_port), "--draft-ahead-rejections", str(rejections)),
        gateway_args=(*drafts, "--fixed-k", "--no-verifier-ngram"),
        network_delay_ms=args.delay_ms,
    ) as stack:
        requests = [greedy_request(p, max_tokens=args.max_tokens) for p in PROMPTS]
        generate_concurrently(stack.gateway.address, requests)  # warm up
        started = time.perf_counter()
        for _ in range(args.repeats):
            generate_concurrently(stack.gateway.address, requests)
        seconds = time.perf_counter() - started
        ahead = scrape(metrics_port).get("splitspec_draft_ahead")
        counts = {o: int(value(ahead, "_total", outcome=o)) if ahead else 0 for o in OUTCOMES}
    ready = (counts["hit"] + counts["hit_after_rejection"]) / max(1, sum(counts.values()))
    return f"{seconds:6.2f} s   ready {ready:5.1%}   " + "  ".join(f"{o} {counts[o]}" for o in OUTCOMES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="0.02,0.05,0.1", help="noise scales of the draft models")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the four prompts, at once, per stack")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("-k", type=int, default=3)
    parser.add_argument("--delay-ms", type=float, default=3.0, help="one-way delay on every link")
    parser.add_argument("--tree-width", type=int, default=0, help="also trees of this width (0: none)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="draft_ahead_rejections_"))
    target = write_tiny_checkpoint(root / "target", "llama", seed=0)
    print(f"{args.repeats} x {len(PROMPTS)} requests at once, {args.max_tokens} tokens, K={args.k}, "
          f"{args.delay_ms:g} ms each way")  # fmt: skip
    for scale in (float(s) for s in args.scales.split(",")):
        draft = write_perturbed_copy(target, root / f"draft_{scale}", scale=scale)
        configs = [(0, 1), (1, 1)] + ([(0, args.tree_width)] if args.tree_width > 1 else [])
        for rejections, width in configs * 2:
            line = measure(target, draft, rejections, width, root / f"stack_{scale}_{rejections}_{width}", args)
            name = f"--tree-width {width}" if width > 1 else f"--draft-ahead-rejections {rejections}"
            print(f"noise {scale:<5g} {name:<26}: {line}", flush=True)


if __name__ == "__main__":
    main()
