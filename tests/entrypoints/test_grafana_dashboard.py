"""deploy/grafana/splitspec.json is a dashboard Grafana can import whose queries name only series the services
export, under the names Prometheus gives them, and cover every panel's topic.

No Grafana or Prometheus is needed: the file is read as JSON and its PromQL scanned. That each queried
series really appears on the services' /metrics is the end-to-end metrics test's part (tests/grafana_queries.py).
"""

from __future__ import annotations

import itertools
import json

import pytest

from tests.grafana_queries import DASHBOARD, exprs, panels, queried_series

COUNTERS = {
    "splitspec_request_success_total",
    "splitspec_request_failure_total",
    "splitspec_prompt_tokens_total",
    "splitspec_generation_tokens_total",
    "splitspec_spec_decode_num_drafts_total",
    "splitspec_spec_decode_num_draft_tokens_total",
    "splitspec_spec_decode_num_accepted_tokens_total",
    "splitspec_spec_decode_num_accepted_tokens_per_pos_total",
    "splitspec_proposer_failovers_total",
    "splitspec_verifier_failovers_total",
    "splitspec_num_preemptions_total",
}
GAUGES = {"splitspec_num_requests_running", "splitspec_kv_cache_usage_perc", "splitspec_proposer_sequences"}
HISTOGRAMS = {
    "splitspec_time_to_first_token_seconds",
    "splitspec_inter_token_latency_seconds",
    "splitspec_e2e_request_latency_seconds",
    "splitspec_verify_pass_seconds",
    "splitspec_verify_batch_tokens",
    "splitspec_verify_batch_sequences",
    "splitspec_draft_seconds",
    "splitspec_draft_batch_sequences",
}
# a histogram is scraped as these three series; its bare name is none of them
EXPORTED = COUNTERS | GAUGES | {name + suffix for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
# one series at least for each thing the dashboard is there to show
SHOWN = {
    "splitspec_generation_tokens_total",
    "splitspec_request_success_total",
    "splitspec_request_failure_total",
    "splitspec_time_to_first_token_seconds_bucket",
    "splitspec_inter_token_latency_seconds_bucket",
    "splitspec_e2e_request_latency_seconds_bucket",
    "splitspec_spec_decode_num_accepted_tokens_total",
    "splitspec_spec_decode_num_draft_tokens_total",
    "splitspec_spec_decode_num_drafts_total",
    "splitspec_spec_decode_num_accepted_tokens_per_pos_total",
    "splitspec_kv_cache_usage_perc",
    "splitspec_num_requests_running",
    "splitspec_num_preemptions_total",
    "splitspec_verify_pass_seconds_bucket",
    "splitspec_proposer_sequences",
    "splitspec_draft_seconds_bucket",
    "splitspec_proposer_failovers_total",
    "splitspec_verifier_failovers_total",
}
DATASOURCE_VARIABLE = "DS_PROMETHEUS"
GRID_WIDTH = 24
CLOSING = {")": "(", "]": "[", "}": "{"}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def brackets_balance(promql: str) -> bool:
    """(), [] and {} nest properly outside string literals."""
    stack: list[str] = []
    quote = None
    chars = iter(promql)
    for char in chars:
        if quote:
            if char == "\\":
                next(chars, None)
            elif char == quote:
                quote = None
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            stack.append(char)
        elif char in CLOSING and (not stack or stack.pop() != CLOSING[char]):
            return False
    return not stack and quote is None


def test_the_file_is_a_json_dashboard():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["panels"]


def test_every_panel_has_a_query(dashboard):
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no targets"
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"panel {panel['title']!r}: target {target['refId']} has no expr"


def test_every_query_goes_to_the_chosen_prometheus(dashboard):
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == DATASOURCE_VARIABLE]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    expected = {"type": "prometheus", "uid": "${" + DATASOURCE_VARIABLE + "}"}
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == expected, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, f"{panel['title']!r} target {target['refId']}"


def test_queries_name_only_series_the_services_export(dashboard):
    assert queried_series(dashboard) <= EXPORTED, sorted(queried_series(dashboard) - EXPORTED)


def test_queries_cover_everything_the_dashboard_shows(dashboard):
    assert SHOWN <= queried_series(dashboard), sorted(SHOWN - queried_series(dashboard))


def test_queried_series_reads_metric_names_not_label_values():
    expr = 'histogram_quantile(0.99, sum by (le) (rate(splitspec_draft_seconds_bucket{job=~"splitspec-proposer"}[5m])))'
    dashboard = {"panels": [{"type": "row", "panels": [{"type": "timeseries", "targets": [{"expr": expr}]}]}]}
    assert queried_series(dashboard) == {"splitspec_draft_seconds_bucket"}


@pytest.mark.parametrize("promql", ["rate(x[5m]", 'sum(x{a="b")}', "x)", 'x{a=")"}}'])
def test_unbalanced_brackets_are_caught(promql):
    assert not brackets_balance(promql)


def test_brackets_balance_in_every_query(dashboard):
    for expr in exprs(dashboard):
        assert brackets_balance(expr), expr


def test_panel_ids_are_unique(dashboard):
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), sorted(ids)


def test_panels_tile_the_grid_without_overlapping(dashboard):
    for panel in panels(dashboard):
        pos = panel["gridPos"]
        assert all(isinstance(pos[key], int) for key in "hwxy"), panel["title"]
        assert pos["h"] > 0 and pos["w"] > 0 and pos["x"] >= 0 and pos["y"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= GRID_WIDTH, panel["title"]
    # a collapsed row keeps its panels at their expanded places, which the panels below it then occupy
    boxes = [(panel["title"], panel["gridPos"]) for panel in dashboard["panels"]]
    for (a, p), (b, q) in itertools.combinations(boxes, 2):
        overlap = (
            p["x"] < q["x"] + q["w"]
            and q["x"] < p["x"] + p["w"]
            and p["y"] < q["y"] + q["h"]
            and q["y"] < p["y"] + p["h"]
        )
        assert not overlap, f"{a!r} and {b!r} overlap"
