"""The bench's chart: tokens/s against load, one line per configuration, one panel per kind of load."""

from __future__ import annotations

import sys
from pathlib import Path


def write_load_chart(rows: list[dict], path: Path, title: str) -> Path | None:
    """A PNG of throughput against concurrency (and against request rate, when measured); None when
    there is nothing to draw, or no matplotlib to draw with (a machine given only what serving needs)."""
    if not rows:
        return None
    try:
        import matplotlib
    except ImportError:
        print("bench: no chart: matplotlib is not installed here", file=sys.stderr, flush=True)
        return None

    matplotlib.use("Agg")  # files only: no display, and no GUI toolkit imported
    from matplotlib import pyplot as plt

    modes = [m for m in ("concurrency", "request_rate") if any(r["mode"] == m for r in rows)]
    figure, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 4.5), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        chosen = [r for r in rows if r["mode"] == mode]
        for config in dict.fromkeys(r["config"] for r in chosen):
            points = sorted((r["level"], r["throughput_tokens_per_s"]) for r in chosen if r["config"] == config)
            style = "--" if config.endswith("K=0") else "-"
            ax.plot(*zip(*points), style, marker="o", label=config)
        levels = sorted({r["level"] for r in chosen})
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [f"{v:g}" for v in levels])
        ax.set_xlabel("concurrent requests" if mode == "concurrency" else "requests per second (Poisson)")
        ax.set_ylabel("output tokens/s")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
