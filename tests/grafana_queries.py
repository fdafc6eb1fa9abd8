"""Which splitspec series the Grafana dashboard (deploy/grafana/splitspec.json) queries.

`queried_series` reads every panel target's PromQL and returns the `splitspec_*` names as written there
(a histogram as `..._bucket`, `..._sum` or `..._count`). The end-to-end metrics test checks that each of
them appears on the services' real /metrics, so that a renamed metric breaks a test instead of silently
emptying a panel; tests/entrypoints/test_grafana_dashboard.py checks the file itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "splitspec.json"
# a metric name (letters, digits, _ and :) starting with splitspec_ and not the tail of a longer name;
# label values such as job=~"splitspec-gateway" do not match
SERIES = re.compile(r"(?<![A-Za-z0-9_:])splitspec_[A-Za-z0-9_:]*")


def panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, including those inside a collapsed row."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def exprs(dashboard: dict) -> Iterator[str]:
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield target.get("expr", "")


def queried_series(dashboard: dict) -> set[str]:
    return {name for expr in exprs(dashboard) for name in SERIES.findall(expr)}
