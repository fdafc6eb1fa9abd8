"""The metrics of an in-process `LLM`: the request series a gateway records (and the KV usage and
preemptions a verifier does), kept in a registry of its own and read back by `LLM.get_metrics()`."""

from __future__ import annotations

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Observation
from prometheus_client import CollectorRegistry

from splitspec.engine import Engine
from splitspec.metrics import (
    Metric,
    RequestMetrics,
    RequestTimer,
    kv_cache_usage,
    meter_provider,
    observe_prefix_cache,
    read_metrics,
)
from splitspec.sequence import Sequence


class InProcessMetrics:
    def __init__(self, engine: Engine, runner) -> None:
        self.registry = CollectorRegistry()
        reader = PrometheusMetricReader(disable_target_info=True, registry=self.registry)
        meter = meter_provider("llm", [reader]).get_meter("splitspec")
        self.requests = RequestMetrics(meter)

        meter.create_observable_gauge(
            "splitspec_kv_cache_usage_perc", [lambda _: kv_cache_usage(runner)], description="KV cache in use, 0-1"
        )
        observe_prefix_cache(meter, runner)
        meter.create_observable_counter(
            "splitspec_num_preemptions",
            [lambda _: [Observation(engine.num_preemptions)]],
            description="Sequences preempted to make room in the KV cache",
        )
        self._running: dict[str, tuple[Sequence, RequestTimer]] = {}
        self._seen: dict[str, int] = {}

    def started(self, sequences: list[Sequence]) -> None:
        for seq in sequences:
            self._running[seq.seq_id] = (seq, RequestTimer())
            self._seen[seq.seq_id] = 0
        self.requests.running.add(len(sequences))

    def stepped(self) -> None:
        """After an engine step: the tokens each running request gained, and the requests that ended."""
        for seq_id, (seq, timer) in list(self._running.items()):
            gained = seq.num_output_tokens - self._seen[seq_id]
            if gained > 0:
                self.requests.tokens(timer, gained)
                self._seen[seq_id] = seq.num_output_tokens
            if seq.finished:
                self.requests.finished(timer, seq.finish_reason, len(seq.prompt_token_ids), seq.stats)
                self._end(seq_id)

    def aborted(self) -> None:
        """generate() failed or was interrupted: what was still running counts as failed."""
        for seq_id in list(self._running):
            self.requests.failure.add(1, {"reason": "aborted"})
            self._end(seq_id)

    def _end(self, seq_id: str) -> None:
        del self._running[seq_id], self._seen[seq_id]
        self.requests.running.add(-1)

    def read(self) -> list[Metric]:
        return read_metrics(self.registry.collect())
