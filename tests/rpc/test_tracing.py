"""OpenTelemetry traces of a real stack, received by a real OTLP/gRPC receiver (opentelemetry-proto's
TraceService) that the test runs: one request is one trace through gateway, verifier and proposer,
under the client's own traceparent, and the batched passes link to the requests they served."""

from __future__ import annotations

import secrets
import threading
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from service_stack import running_stack

from splitspec.entrypoints.client import build_request
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span it is sent, with its service's name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    self.spans += [(attributes.get("service.name"), s) for s in scope_spans.spans]
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def receiver():
    servicer = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"http://127.0.0.1:{port}"
    server.stop(0)


def test_one_request_is_one_trace_across_the_three_services(tiny_llama, tmp_path, receiver, monkeypatch):
    spans, endpoint = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    metadata = [("traceparent", f"00-{trace_id}-{client_span}-01")]
    prompt = [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6]
    # every round drafts: adaptive K may price the proposer's round trip above its drafts and send it nothing
    with running_stack(tiny_llama, tmp_path, k=3, gateway_args=("--fixed-k",)) as stack:
        with grpc.insecure_channel(stack.gateway.address) as channel:
            stub = pb_grpc.GatewayStub(channel)
            request = build_request(prompt, temperature=0, max_tokens=24, ignore_eos=True, seed=3)
            final = list(stub.Generate(request, metadata=metadata, timeout=60))[-1]
            list(stub.Generate(request, timeout=60))  # a request without a traceparent: a trace of its own
    # the stack stopped: every service flushed its spans on the way out

    by_service: dict[str, list] = {}
    for service, span in spans.spans:
        by_service.setdefault(service, []).append(span)
    assert {"splitspec-gateway", "splitspec-verifier", "splitspec-proposer"} <= set(by_service)

    in_trace = {s.name: s for s in by_service["splitspec-gateway"] if s.trace_id.hex() == trace_id}
    assert len(in_trace) == 2, list(in_trace)
    server_span = in_trace.pop("/splitspec.v1.Gateway/Generate")  # opentelemetry-instrumentation-grpc's
    assert server_span.parent_span_id.hex() == client_span
    ((name, root),) = in_trace.items()
    assert name.startswith("generate ") and root.parent_span_id == server_span.span_id
    attributes = {a.key: a.value for a in root.attributes}
    assert attributes["gen_ai.usage.output_tokens"].int_value == final.usage.completion_tokens == 24
    assert attributes["gen_ai.usage.input_tokens"].int_value == len(prompt)
    assert attributes["gen_ai.request.max_tokens"].int_value == 24
    assert attributes["gen_ai.request.seed"].int_value == 3
    assert list(attributes["gen_ai.response.finish_reasons"].array_value.values)[0].string_value == "length"
    assert attributes["splitspec.rounds"].int_value == final.speculation.num_rounds
    assert attributes["splitspec.accepted"].int_value == final.speculation.num_accepted_tokens
    assert attributes["splitspec.failovers"].int_value == 0

    for service, name in (("splitspec-verifier", "verifier sequence"), ("splitspec-proposer", "proposer sequence")):
        children = [s for s in by_service[service] if s.trace_id.hex() == trace_id]
        assert [s.name for s in children] == [name], service
        assert children[0].parent_span_id == root.span_id
    for service, name in (("splitspec-verifier", "verify pass"), ("splitspec-proposer", "draft batch")):
        batches = [s for s in by_service[service] if s.name == name]
        linked = [s for s in batches if any(link.span_id == root.span_id for link in s.links)]
        assert linked and all(s.trace_id.hex() != trace_id for s in linked), f"{name} spans link to the request"
    others = [s for s in by_service["splitspec-gateway"] if s.name.startswith("generate ") and s is not root]
    assert len(others) == 1 and others[0].trace_id.hex() != trace_id
    assert not any("Health" in s.name for s in by_service["splitspec-gateway"]), "health checks make no spans"
