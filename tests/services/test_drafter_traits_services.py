"""A gateway plans rounds from what its proposers report of their drafter (ProposerInfo), never from its
own flags: one told nothing works with whatever proposers it finds, and a proposer whose drafter would
plan rounds differently is refused, with output unchanged."""

from __future__ import annotations

import grpc
import pytest
from e2e_requests import PROMPTS, generate, token_ids
from metrics_scrape import drafts_served
from service_stack import start_service, wait_for

from splitspec import LLM, SamplingParams
from splitspec.entrypoints.client import build_request
from splitspec_protos import splitspec_v1_pb2 as pb
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

MAX_TOKENS = 24


def proposer_info(address: str) -> pb.ProposerInfo:
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.ProposerStub(channel).GetInfo(pb.InfoRequest(), timeout=10)


def model_info(address: str) -> pb.ModelInfo:
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.GatewayStub(channel).GetModelInfo(pb.ModelInfoRequest(), timeout=10)


def test_each_proposer_reports_what_its_drafter_is(tiny_llama, tmp_path):
    ngram = start_service("ngram", ["serve-proposer", "--method", "ngram", "-k", "5"], tmp_path)
    suffix = start_service("suffix", ["serve-proposer", "--method", "suffix", "--max-drafts-per-step", "32"], tmp_path)
    try:
        info = proposer_info(ngram.address)
        assert (info.method, info.num_speculative_tokens, info.max_num_speculative_tokens) == ("ngram", 5, 128)
        assert info.drafts_ahead and info.drafts_after_rejection
        assert not (info.samples_drafts or info.sizes_own_drafts or info.remembers_outputs or info.needs_hidden_states)
        info = proposer_info(suffix.address)
        assert (info.method, info.max_num_speculative_tokens) == ("suffix", 32)
        assert info.sizes_own_drafts and info.remembers_outputs and info.drafts_ahead
        assert not (info.samples_drafts or info.drafts_after_rejection or info.needs_hidden_states)
    finally:
        ngram.stop()
        suffix.stop()


def test_a_gateway_told_nothing_drafts_with_its_proposers_and_refuses_one_unlike_them(tiny_llama, tmp_path):
    """Of an n-gram proposer (K=5) and a suffix one (K=7), the first in address order sets the drafter;
    the other is refused and drafts nothing (at a fixed K, so that the admitted one surely drafts); the gateway reports the drafter's method and K, and the
    output is the target's own."""
    services = []
    try:
        ngram = start_service("ngram", ["serve-proposer", "--method", "ngram", "-k", "5"], tmp_path, metrics=True)
        services.append(ngram)
        suffix = start_service("suffix", ["serve-proposer", "--method", "suffix", "-k", "7"], tmp_path, metrics=True)
        services.append(suffix)
        admitted, refused = sorted([ngram, suffix], key=lambda s: s.address)
        verifier = start_service("verifier", ["serve-verifier", "--model", str(tiny_llama)], tmp_path)
        services.append(verifier)
        gateway = start_service(
            "gateway",
            ["serve-gateway", "--model", str(tiny_llama), "--verifiers", verifier.address,
             "--proposers", f"{refused.address},{admitted.address}", "--ngram-on-proposers", "--fixed-k"],
            tmp_path,
        )  # fmt: skip
        services.append(gateway)
        info = model_info(gateway.address)
        assert (info.method, info.num_speculative_tokens) == {"ngram": ("ngram", 5), "suffix": ("suffix", 7)}[
            admitted.name
        ]
        assert wait_for(lambda: f"proposer {refused.address} refused" in gateway.logs(), timeout=10), gateway.logs()

        params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
        own = [o.outputs[0].token_ids for o in LLM(str(tiny_llama)).generate(
            [{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)]  # fmt: skip
        requests = [build_request(p, temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True) for p in PROMPTS]
        assert [token_ids(generate(gateway.address, r)) for r in requests] == own
        assert drafts_served(admitted.metrics_port) > 0, "the admitted proposer drafted"
        assert drafts_served(refused.metrics_port) == 0, "the refused one drafted nothing"
    finally:
        for service in reversed(services):
            service.stop()


def test_a_gateway_told_a_method_refuses_proposers_of_another(tiny_llama, tmp_path):
    services = []
    try:
        suffix = start_service("suffix", ["serve-proposer", "--method", "suffix"], tmp_path, metrics=True)
        services.append(suffix)
        verifier = start_service("verifier", ["serve-verifier", "--model", str(tiny_llama)], tmp_path)
        services.append(verifier)
        gateway = start_service(
            "gateway",
            ["serve-gateway", "--model", str(tiny_llama), "--verifiers", verifier.address,
             "--proposers", suffix.address, "--method", "draft_model"],
            tmp_path,
        )  # fmt: skip
        services.append(gateway)
        assert wait_for(lambda: "--method draft_model" in gateway.logs(), timeout=10), gateway.logs()
        assert model_info(gateway.address).method == ""
        params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
        own = LLM(str(tiny_llama)).generate([{"prompt_token_ids": PROMPTS[0]}], params, use_tqdm=False)
        request = build_request(PROMPTS[0], temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
        response = generate(gateway.address, request)
        assert token_ids(response) == own[0].outputs[0].token_ids, "no drafter: every round verifies no drafts"
        assert drafts_served(suffix.metrics_port) == 0
    finally:
        for service in reversed(services):
            service.stop()
