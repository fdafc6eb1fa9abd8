"""Prometheus metrics of a real stack, read the way Prometheus reads them: each service's /metrics
parsed with prometheus_client's text parser after known requests. Every name operators look for is
there with its type, and the gateway's counters add up to what the requests themselves reported."""

from __future__ import annotations

import json
from collections import defaultdict

import grpc
import pytest
from grafana_queries import DASHBOARD, queried_series
from metrics_scrape import scrape, value
from service_stack import free_port, running_stack, wait_for

from splitspec.entrypoints.client import build_request
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

EXPECTED = {
    "gateway": {
        "splitspec_request_success": "counter",
        "splitspec_request_failure": "counter",
        "splitspec_num_requests_running": "gauge",
        "splitspec_time_to_first_token_seconds": "histogram",
        "splitspec_inter_token_latency_seconds": "histogram",
        "splitspec_e2e_request_latency_seconds": "histogram",
        "splitspec_prompt_tokens": "counter",
        "splitspec_generation_tokens": "counter",
        "splitspec_spec_decode_num_drafts": "counter",
        "splitspec_spec_decode_num_draft_tokens": "counter",
        "splitspec_spec_decode_num_accepted_tokens": "counter",
        "splitspec_spec_decode_num_accepted_tokens_per_pos": "counter",
        "splitspec_proposer_failovers": "counter",
        "splitspec_verifier_failovers": "counter",
        "splitspec_draft_ahead": "counter",
        "splitspec_verify_rounds": "counter",
        "splitspec_drafter_switches": "counter",
        "splitspec_verifier_reported_sequences": "gauge",
    },
    "verifier": {
        "splitspec_num_requests_running": "gauge",
        "splitspec_kv_cache_usage_perc": "gauge",
        "splitspec_num_preemptions": "counter",
        "splitspec_prefix_cache_queries": "counter",
        "splitspec_prefix_cache_hits": "counter",
        "splitspec_prefix_cache_blocks": "gauge",
        "splitspec_verify_pass_seconds": "histogram",
        "splitspec_verify_batch_tokens": "histogram",
        "splitspec_verify_batch_sequences": "histogram",
        "splitspec_verifier_draft_tokens": "counter",
        "splitspec_verifier_draft_cuts": "counter",
        "splitspec_verifier_tree_drafts": "counter",
    },
    "proposer": {
        "splitspec_proposer_sequences": "gauge",
        "splitspec_draft_seconds": "histogram",
        "splitspec_draft_batch_sequences": "histogram",
    },
}
PROMPTS = [[5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6], [17, 3, 17, 3, 17, 3], list(range(30, 60)) * 2]


def test_every_service_serves_its_metrics_and_the_gateway_s_add_up_to_the_requests(tiny_llama, tmp_path):
    ports = {name: free_port() for name in EXPECTED}
    with running_stack(
        tiny_llama,
        tmp_path,
        method="draft_model",
        draft_model=tiny_llama,  # the target as its own drafter: greedy drafts are accepted whatever the timing
        verifier_args=("--metrics-port", str(ports["verifier"])),
        proposer_args=("--metrics-port", str(ports["proposer"])),
        gateway_args=("--metrics-port", str(ports["gateway"]), "--fixed-k"),  # drafts every round, so some are accepted
    ) as stack:
        with grpc.insecure_channel(stack.gateway.address) as channel:
            stub = pb_grpc.GatewayStub(channel)
            finals = []
            for prompt, max_tokens in zip(PROMPTS, (40, 25, 30)):
                request = build_request(prompt, temperature=0, max_tokens=max_tokens, ignore_eos=True)
                finals.append(list(stub.Generate(request, timeout=60))[-1])
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.Generate(build_request([], max_tokens=5), timeout=10))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert wait_for(lambda: value(scrape(ports["verifier"])["splitspec_num_requests_running"]) == 0)
        families = {name: scrape(port) for name, port in ports.items()}

    for service, expected in EXPECTED.items():
        got = {name: families[service][name].type for name in expected if name in families[service]}
        assert got == expected, f"{service}: missing or mistyped metrics"

    gateway = families["gateway"]
    assert value(gateway["splitspec_request_success"], "_total", finished_reason="length") == len(PROMPTS)
    assert value(gateway["splitspec_request_failure"], "_total", reason="invalid_argument") == 1
    assert value(gateway["splitspec_num_requests_running"]) == 0
    assert value(gateway["splitspec_prompt_tokens"], "_total") == sum(f.usage.prompt_tokens for f in finals)
    assert value(gateway["splitspec_generation_tokens"], "_total") == sum(f.usage.completion_tokens for f in finals)
    assert value(gateway["splitspec_e2e_request_latency_seconds"], "_count") == len(PROMPTS)
    assert value(gateway["splitspec_time_to_first_token_seconds"], "_count") == len(PROMPTS)
    spec = [f.speculation for f in finals]
    drafts = sum(s.drafted_per_position[0] for s in spec if s.drafted_per_position)
    assert drafts > 0 and value(gateway["splitspec_spec_decode_num_drafts"], "_total") == drafts
    draft_tokens = value(gateway["splitspec_spec_decode_num_draft_tokens"], "_total")
    accepted = value(gateway["splitspec_spec_decode_num_accepted_tokens"], "_total")
    assert draft_tokens == sum(s.num_draft_tokens for s in spec)
    assert 0 < accepted == sum(s.num_accepted_tokens for s in spec)
    per_position = defaultdict(int)
    for s in spec:
        for position, n in enumerate(s.accepted_per_position):
            per_position[str(position)] += n
    per_pos = gateway["splitspec_spec_decode_num_accepted_tokens_per_pos"]
    assert {p: value(per_pos, "_total", position=p) for p in per_position} == per_position
    assert value(gateway["splitspec_verifier_failovers"], "_total") == 0
    hits = value(gateway["splitspec_draft_ahead"], "_total", outcome="hit")
    misses = value(gateway["splitspec_draft_ahead"], "_total", outcome="miss")
    assert hits + misses > 0 and hits <= drafts, "rounds drafted ahead, and each hit fed a round that drafted"
    by_drafter = {
        d: value(gateway["splitspec_verify_rounds"], "_total", drafter=d) for d in ("verifier", "proposer", "none")
    }
    assert by_drafter == {"verifier": 0, "proposer": drafts, "none": sum(s.num_rounds for s in spec) - drafts}

    verifier = families["verifier"]
    rounds = sum(s.num_rounds for s in spec)
    assert value(verifier["splitspec_verify_batch_sequences"], "_sum") >= rounds
    assert value(verifier["splitspec_verify_batch_tokens"], "_sum") >= draft_tokens + rounds
    assert value(verifier["splitspec_verify_pass_seconds"], "_count") > 0
    stages = {s: value(verifier["splitspec_verifier_draft_tokens"], "_total", stage=s) for s in ("offered", "verified")}
    # the verifier also counts pipelined steps verified after their request's last token, which no result reports
    assert draft_tokens <= stages["verified"] <= stages["offered"]
    assert (
        accepted <= value(verifier["splitspec_verifier_draft_tokens"], "_total", stage="accepted") <= stages["verified"]
    )
    assert (value(verifier["splitspec_verifier_draft_cuts"], "_total") > 0) == (stages["verified"] < stages["offered"])
    assert 0 <= value(verifier["splitspec_kv_cache_usage_perc"]) < 1
    # every first pass looks its prompt up, and committed blocks stay cached
    assert value(verifier["splitspec_prefix_cache_queries"], "_total") >= sum(len(p) for p in PROMPTS)
    assert value(verifier["splitspec_prefix_cache_blocks"]) > 0
    proposer = families["proposer"]
    assert value(proposer["splitspec_draft_batch_sequences"], "_sum") >= drafts
    assert value(proposer["splitspec_proposer_sequences"]) == 0

    exposed = {s.name for fams in families.values() for f in fams.values() for s in f.samples}
    missing = queried_series(json.loads(DASHBOARD.read_text())) - exposed
    assert not missing, f"the Grafana dashboard queries series no service exposes: {sorted(missing)}"
