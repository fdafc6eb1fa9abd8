"""Losing a verifier loses no token: the gateway restarts each affected sequence on another verifier
from the committed history it holds, and the client sees one uninterrupted stream."""

from __future__ import annotations

import signal
import threading
import time
from contextlib import ExitStack

import grpc
import pytest
from greedy_reference import assert_same_or_near_tie
from service_stack import start_service
from transformers import AutoModelForCausalLM

from protos import splitspec_v1_pb2 as pb
from protos import splitspec_v1_pb2_grpc as pb_grpc
from splitspec import LLM, SamplingParams
from splitspec.entrypoints.client import build_request

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROMPTS = [
    [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6],
    [17, 3],
    list(range(30, 90)) + list(range(30, 50)),
    [100, 101, 102, 100, 101, 102, 100, 101],
]
MAX_TOKENS = 300
SEEDS = [11, 12, 13, 14]


def _two_verifier_stack(model, log_dir, cleanup: ExitStack, grace_seconds: float = 5):
    verifiers = [
        start_service(f"verifier{i}", ["serve-verifier", "--model", str(model)], log_dir, grace_seconds=grace_seconds)
        for i in range(2)
    ]
    for v in verifiers:
        cleanup.callback(v.stop)
    proposer = start_service("proposer", ["serve-proposer", "-k", "3"], log_dir)
    cleanup.callback(proposer.stop)
    gateway = start_service(
        "gateway",
        [
            "serve-gateway",
            "--model",
            str(model),
            "-k",
            "3",
            "--verifiers",
            ",".join(v.address for v in verifiers),
            "--proposers",
            proposer.address,
        ],  # fmt: skip
        log_dir,
    )
    cleanup.callback(gateway.stop)
    return verifiers, gateway


class _Stream(threading.Thread):
    """One Generate call read to its end on its own thread; `first` is set at its first message."""

    def __init__(self, stub, request: pb.GenerateRequest) -> None:
        super().__init__(daemon=True)
        self.call = stub.Generate(request, timeout=120)
        self.first = threading.Event()
        self.responses: list[pb.GenerateResponse] = []
        self.error: grpc.RpcError | None = None

    def run(self) -> None:
        try:
            for response in self.call:
                self.responses.append(response)
                self.first.set()
        except grpc.RpcError as exc:
            self.error = exc
            self.first.set()

    @property
    def token_ids(self) -> list[int]:
        return [t for r in self.responses for t in r.token_ids]


def _all_streaming(stub, requests: list[pb.GenerateRequest]) -> list[_Stream]:
    """Start every request and return once each has streamed its first message."""
    streams = [_Stream(stub, r) for r in requests]
    for s in streams:
        s.start()
    for s in streams:
        assert s.first.wait(60)
    return streams


def _num_sequences(verifier_address: str) -> int:
    with grpc.insecure_channel(verifier_address) as channel:
        return pb_grpc.VerifierStub(channel).GetInfo(pb.InfoRequest(), timeout=5).num_sequences


def test_killing_a_verifier_mid_stream_loses_no_token(tiny_llama, tmp_path):
    """Eight streams, greedy and seeded sampling, spread over two verifiers; one is SIGKILLed while
    all are running. Every stream completes with the tokens an uninterrupted in-process run gives."""
    llm = LLM(str(tiny_llama))
    greedy = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    sampled = [
        SamplingParams(temperature=0.8, top_p=0.95, max_tokens=MAX_TOKENS, ignore_eos=True, seed=s) for s in SEEDS
    ]
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    expected_greedy = [o.outputs[0].token_ids for o in llm.generate(prompts, greedy, use_tqdm=False)]
    expected_sampled = [o.outputs[0].token_ids for o in llm.generate(prompts, sampled, use_tqdm=False)]
    requests = [build_request(p, temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True) for p in PROMPTS] + [
        build_request(p, temperature=0.8, top_p=0.95, max_tokens=MAX_TOKENS, ignore_eos=True, seed=s)
        for p, s in zip(PROMPTS, SEEDS)
    ]
    with ExitStack() as cleanup:
        verifiers, gateway = _two_verifier_stack(tiny_llama, tmp_path, cleanup)
        channel = grpc.insecure_channel(gateway.address)
        cleanup.callback(channel.close)
        stub = pb_grpc.GatewayStub(channel)
        streams = _all_streaming(stub, requests)
        on_victim = _num_sequences(verifiers[0].address)
        verifiers[0].stop(signal.SIGKILL)
        for s in streams:
            s.join(120)
        received_before_end = [len(s.responses) for s in streams]
    assert on_victim > 0, "the killed verifier was serving some of the streams"
    assert all(s.error is None for s in streams), [s.error for s in streams if s.error]
    assert all(s.responses[-1].finish_reason == "length" for s in streams)
    assert all(n > 1 for n in received_before_end)
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    for prompt, stream, want in zip(PROMPTS, streams[:4], expected_greedy):
        assert_same_or_near_tie(hf, prompt, stream.token_ids, want)
    assert [s.token_ids for s in streams[4:]] == expected_sampled


def test_sigterm_moves_a_verifier_s_sequences_and_it_exits_once_empty(tiny_llama, tmp_path):
    """Draining: health NOT_SERVING, the gateway moves each sequence at its next round, and the verifier
    exits as soon as it holds none, long before its grace period; no stream notices."""
    llm = LLM(str(tiny_llama))
    greedy = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    expected = [o.outputs[0].token_ids for o in llm.generate([{"prompt_token_ids": p} for p in PROMPTS], greedy,
                                                            use_tqdm=False)]  # fmt: skip
    requests = [
        build_request(p, temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, num_speculative_tokens=0)
        for p in PROMPTS * 2
    ]
    with ExitStack() as cleanup:
        verifiers, gateway = _two_verifier_stack(tiny_llama, tmp_path, cleanup, grace_seconds=120)
        channel = grpc.insecure_channel(gateway.address)
        cleanup.callback(channel.close)
        streams = _all_streaming(pb_grpc.GatewayStub(channel), requests)
        on_drained = _num_sequences(verifiers[0].address)
        started = time.monotonic()
        verifiers[0].proc.send_signal(signal.SIGTERM)
        assert verifiers[0].proc.wait(timeout=60) == 0
        drained_after = time.monotonic() - started
        still_running = sum(s.is_alive() for s in streams)
        for s in streams:
            s.join(120)
    assert on_drained > 0, "the drained verifier was serving some of the streams"
    assert drained_after < 30, f"exited {drained_after:.1f} s after SIGTERM; its grace period is 120 s"
    assert still_running > 0, "streams were still running when it exited: they had moved"
    assert "drained" in verifiers[0].logs()
    assert all(s.error is None for s in streams), [s.error for s in streams if s.error]
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    for prompt, stream, want in zip(PROMPTS * 2, streams, expected * 2):
        assert_same_or_near_tie(hf, prompt, stream.token_ids, want)
