"""OpenTelemetry traces: off unless the standard environment or `--otlp-traces-endpoint` asks for them.

On: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set, or the flag (vLLM's)
names an endpoint. Spans go out by OTLP, over gRPC unless `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` (or
`OTEL_EXPORTER_OTLP_PROTOCOL`) says `http/protobuf`, in batches from a background thread, named by
`OTEL_SERVICE_NAME` or `splitspec-<service>`. Off: a tracer whose spans record nothing.

Requests cross the internal streams with their W3C trace context inside the messages, since one
stream multiplexes many requests (`context_of`, `span_context_of`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from splitspec.errors import SplitspecError

PROPAGATOR = TraceContextTextMapPropagator()


def traces_endpoint(flag: str | None = None) -> str | None:
    return flag or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")


@dataclass
class Tracing:
    tracer: trace.Tracer = field(default_factory=trace.NoOpTracer)
    provider: object | None = None

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def server_interceptors(self) -> list:
        """gRPC server spans (opentelemetry-instrumentation-grpc), each the child of its caller's
        `traceparent` metadata; health checks make none."""
        if self.provider is None:
            return []
        from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

        return [aio_server_interceptor(tracer_provider=self.provider, filter_=filters.negate(filters.health_check()))]

    def shutdown(self) -> None:
        """Export what is still buffered; call once, when the process stops."""
        if self.provider is not None:
            self.provider.shutdown()


def start_tracing(service: str, endpoint: str | None) -> Tracing:
    """A tracer exporting to `endpoint` (see the module's docstring), or one that records nothing."""
    if not endpoint:
        return Tracing()
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True if endpoint.startswith("http://") else None)
    elif protocol == "http/protobuf":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPExporter
        except ImportError:
            raise SplitspecError(
                "OTLP over http/protobuf needs `pip install opentelemetry-exporter-otlp-proto-http`"
            ) from None
        exporter = HTTPExporter(endpoint=endpoint)
    else:
        raise SplitspecError(f"OTLP traces protocol {protocol!r} is not supported; use grpc or http/protobuf")
    name = os.environ.get("OTEL_SERVICE_NAME") or f"splitspec-{service}"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider.get_tracer("splitspec"), provider)


def carrier_of(span: trace.Span) -> dict[str, str]:
    """The span's W3C trace context headers (traceparent, tracestate); empty for a span that does not record."""
    if not span.get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def context_of(traceparent: str, tracestate: str = "") -> Context | None:
    """The context to open child spans in, from W3C headers; None without a valid traceparent."""
    if not traceparent:
        return None
    context = PROPAGATOR.extract({"traceparent": traceparent, "tracestate": tracestate})
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def span_context_of(traceparent: str, tracestate: str = "") -> trace.SpanContext | None:
    """The remote span W3C headers name, to link to; None without a valid traceparent."""
    context = context_of(traceparent, tracestate)
    return None if context is None else trace.get_current_span(context).get_span_context()
