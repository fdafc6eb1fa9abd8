"""A service's Prometheus /metrics, read the way Prometheus reads it (prometheus_client's text parser),
and the sums the suites check on it."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, object]:
    """The metric families on host:port/metrics, by name (counters without their _total)."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(family, suffix: str = "", **labels) -> float:
    """The sum of the family's samples named name+suffix whose labels include `labels`."""
    return sum(
        s.value
        for s in family.samples
        if s.name == family.name + suffix and all(s.labels.get(k) == v for k, v in labels.items())
    )


def drafts_served(port: int, host: str = "127.0.0.1") -> float:
    """Draft batches a proposer has answered (its histogram appears once it has answered one)."""
    family = scrape(port, host).get("splitspec_draft_seconds")
    return value(family, "_count") if family else 0.0


def accepted_in(responses) -> int:
    """Draft tokens accepted over these stream messages: a round sends the tokens it commits, its
    accepted drafts and one of the target's, in one message (the gateway counts its own speculation
    only when a request ends)."""
    return sum(len(r.token_ids) - 1 for r in responses if r.token_ids)
