"""Metrics through OpenTelemetry, read by Prometheus: one MeterProvider per process.

Names are vLLM's with our prefix and without the colon, which Prometheus reserves for recording
rules. Instruments are created with base names; the Prometheus reader appends `_total` to counters
and `_seconds` to histograms in seconds, so `splitspec_time_to_first_token` with unit "s" is scraped
as `splitspec_time_to_first_token_seconds`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable

from opentelemetry.metrics import Meter, NoOpMeterProvider, Observation
from opentelemetry.sdk.metrics import Histogram as HistogramInstrument
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from splitspec.outputs import SpeculationStats

SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                   10.0, 20.0, 40.0, 80.0, 160.0, 640.0)  # fmt: skip
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def meter_provider(service: str, readers: list[MetricReader]) -> MeterProvider:
    """A provider whose histograms have buckets fit for serving: seconds from 1 ms to minutes, and
    batch sizes in powers of two. No exit hook: one would keep the provider, and through its callbacks
    an in-process LLM's runner (and a tensor-parallel runner's workers), alive until the process ends."""
    views = [
        View(instrument_type=HistogramInstrument, instrument_unit="s",
             aggregation=ExplicitBucketHistogramAggregation(SECONDS_BUCKETS)),
        View(instrument_type=HistogramInstrument, instrument_unit="1", aggregation=ExplicitBucketHistogramAggregation(COUNT_BUCKETS)),
    ]  # fmt: skip
    return MeterProvider(
        metric_readers=readers,
        views=views,
        resource=Resource.create({"service.name": f"splitspec-{service}"}),
        shutdown_on_exit=False,
    )


def serve_metrics(service: str, host: str, port: int) -> Meter:
    """A meter whose instruments Prometheus scrapes at http://host:port/metrics."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    provider = meter_provider(service, [PrometheusMetricReader()])
    start_http_server(port, addr=host)
    return provider.get_meter("splitspec")


def service_meter(service: str, options) -> Meter:
    """The meter of a service started with ServerOptions `options`: served on its metrics port, if any."""
    if options.metrics_port is None:
        return no_meter()
    return serve_metrics(service, options.host, options.metrics_port)


def no_meter() -> Meter:
    """Instruments that record nothing, for a process started without --metrics-port."""
    return NoOpMeterProvider().get_meter("splitspec")


def kv_cache_usage(runner) -> list[Observation]:
    """The share of a paged runner's KV cache blocks in use (none for a runner without paging): the
    callback of a `splitspec_kv_cache_usage_perc` gauge."""
    allocator = getattr(runner, "allocator", None)
    if allocator is None or allocator.num_blocks == 0:
        return []
    return [Observation(1 - runner.num_free_blocks / allocator.num_blocks)]


def observe_prefix_cache(meter: Meter, runner) -> None:
    """vLLM's prefix cache series for a runner's KV cache: prompt tokens looked up, tokens found, and
    blocks held under a key (none without a prefix cache)."""

    def read(field: str):
        def observe(_) -> list[Observation]:
            cache = getattr(getattr(runner, "allocator", None), "prefix_cache", None)
            return [] if cache is None else [Observation(getattr(cache, field))]

        return observe

    meter.create_observable_counter(
        "splitspec_prefix_cache_queries", [read("queries")], description="Prompt tokens looked up in the prefix cache"
    )
    meter.create_observable_counter(
        "splitspec_prefix_cache_hits", [read("hits")], description="Prompt tokens found in the prefix cache"
    )
    meter.create_observable_gauge(
        "splitspec_prefix_cache_blocks", [read("num_cached")], description="KV blocks held in the prefix cache"
    )


@dataclass
class RequestTimer:
    """One request's clock: time to first token, time between token-bearing messages, end to end."""

    started: float = field(default_factory=time.monotonic)
    first: float | None = None
    last: float | None = None


class RequestMetrics:
    """What serving requests records: the gateway's series, and the in-process engine's."""

    def __init__(self, meter: Meter) -> None:
        self.success = meter.create_counter("splitspec_request_success", description="Finished requests")
        self.failure = meter.create_counter("splitspec_request_failure", description="Requests ended by an error")
        self.running = meter.create_up_down_counter("splitspec_num_requests_running", description="Requests running")
        self.ttft = meter.create_histogram("splitspec_time_to_first_token", unit="s", description="Time to first token")
        self.itl = meter.create_histogram(
            "splitspec_inter_token_latency", unit="s", description="Time between a request's token-bearing messages"
        )
        self.e2e = meter.create_histogram("splitspec_e2e_request_latency", unit="s", description="Request latency")
        self.prompt_tokens = meter.create_counter("splitspec_prompt_tokens", description="Prompt tokens processed")
        self.generation_tokens = meter.create_counter("splitspec_generation_tokens", description="Tokens generated")
        self.num_drafts = meter.create_counter(
            "splitspec_spec_decode_num_drafts", description="Rounds that verified at least one draft token"
        )
        self.num_draft_tokens = meter.create_counter(
            "splitspec_spec_decode_num_draft_tokens", description="Draft tokens verified"
        )
        self.num_accepted_tokens = meter.create_counter(
            "splitspec_spec_decode_num_accepted_tokens", description="Draft tokens accepted"
        )
        self.accepted_per_pos = meter.create_counter(
            "splitspec_spec_decode_num_accepted_tokens_per_pos", description="Draft tokens accepted, by draft position"
        )
        self.proposer_failovers = meter.create_counter(
            "splitspec_proposer_failovers", description="Sequences moved to another proposer"
        )
        self.verifier_failovers = meter.create_counter(
            "splitspec_verifier_failovers", description="Sequences moved to another verifier"
        )
        self.draft_ahead = meter.create_counter(
            "splitspec_draft_ahead",
            description="Drafts made while the previous round was verified, by whether its outcome let them be used",
        )
        self.verify_rounds = meter.create_counter(
            "splitspec_verify_rounds",
            description="Rounds verified, by who drafted them: the verifier (its own n-grams), a proposer, or none",
        )
        self.drafter_switches = meter.create_counter(
            "splitspec_drafter_switches",
            description="Requests moved between the verifier's n-gram drafts and their proposer's, by where to",
        )
        for counter in (self.proposer_failovers, self.verifier_failovers):
            counter.add(0)  # a series from the start, so that rate() and dashboards see the first one
        for reason in ("stop", "length"):
            self.success.add(0, {"finished_reason": reason})
        for outcome in ("hit", "miss"):
            self.draft_ahead.add(0, {"outcome": outcome})
        for drafter in ("verifier", "proposer", "none"):
            self.verify_rounds.add(0, {"drafter": drafter})
        for drafter in ("verifier", "proposer"):
            self.drafter_switches.add(0, {"to": drafter})

    def tokens(self, timer: RequestTimer, count: int) -> None:
        """A message with `count` new tokens went out now."""
        if count == 0:
            return
        now = time.monotonic()
        if timer.last is None:
            timer.first = now
            self.ttft.record(now - timer.started)
        else:
            self.itl.record(now - timer.last)
        timer.last = now
        self.generation_tokens.add(count)

    def finished(self, timer: RequestTimer, finish_reason: str, prompt_tokens: int, stats: SpeculationStats) -> None:
        self.success.add(1, {"finished_reason": finish_reason})
        self.e2e.record(time.monotonic() - timer.started)
        self.prompt_tokens.add(prompt_tokens)
        self.speculation(stats)

    def speculation(self, stats: SpeculationStats) -> None:
        """A request's speculation counters, added when it ends."""
        if not stats.drafted_per_position:
            return
        self.num_drafts.add(stats.drafted_per_position[0])
        self.num_draft_tokens.add(stats.num_draft_tokens)
        self.num_accepted_tokens.add(stats.num_accepted_tokens)
        for position, accepted in enumerate(stats.accepted_per_position):
            self.accepted_per_pos.add(accepted, {"position": str(position)})


# -- reading them back in-process (LLM.get_metrics), shaped as vLLM's reader shapes them ------------

SCOPE_LABELS = ("otel_scope_name", "otel_scope_version", "otel_scope_schema_url")
PER_POSITION = "splitspec_spec_decode_num_accepted_tokens_per_pos"


@dataclass(frozen=True)
class Metric:
    name: str
    labels: dict[str, str]


@dataclass(frozen=True)
class Counter(Metric):
    value: float


@dataclass(frozen=True)
class Gauge(Metric):
    value: float


@dataclass(frozen=True)
class Histogram(Metric):
    count: float
    sum: float
    buckets: dict[str, float]
    """Cumulative counts by upper bound ("le"), "+Inf" last."""


@dataclass(frozen=True)
class Vector(Metric):
    values: list[float]
    """A counter by draft position: values[i] is position i's."""


def read_metrics(families: Iterable) -> list[Metric]:
    """prometheus_client metric families (a registry's collect()) as Counter, Gauge, Histogram and
    Vector records, under the names Prometheus shows (counters without `_total`)."""
    metrics: list[Metric] = []
    for family in families:
        if not family.name.startswith("splitspec_"):
            continue
        series: dict[tuple, list] = {}
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k not in SCOPE_LABELS and k != "le"}
            series.setdefault(tuple(sorted(labels.items())), []).append(sample)
        if family.name == PER_POSITION:
            by_position = {int(dict(key)["position"]): samples[0].value for key, samples in series.items()}
            values = [by_position.get(i, 0.0) for i in range(max(by_position, default=-1) + 1)]
            metrics.append(Vector(family.name, {}, values))
            continue
        for key, samples in series.items():
            labels = dict(key)
            if family.type == "counter":
                metrics.append(Counter(family.name, labels, sum(s.value for s in samples if s.name.endswith("_total"))))
            elif family.type == "gauge":
                metrics.append(Gauge(family.name, labels, samples[0].value))
            elif family.type == "histogram":
                by_name = {s.name: s.value for s in samples if not s.name.endswith("_bucket")}
                buckets = {s.labels["le"]: s.value for s in samples if s.name.endswith("_bucket")}
                metrics.append(
                    Histogram(
                        family.name, labels, by_name[family.name + "_count"], by_name[family.name + "_sum"], buckets
                    )
                )
    return metrics
