"""Concurrent Generate streams against a multi-pod stack, and the in-process outputs they must equal:
what the failover, draining and discovery tests share."""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path

import grpc
from greedy_reference import assert_same_or_near_tie
from transformers import AutoModelForCausalLM

from splitspec import LLM, SamplingParams
from splitspec.entrypoints.client import build_request
from splitspec_protos import splitspec_v1_pb2 as pb
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc

PROMPTS = [
    [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6],
    [17, 3],
    list(range(30, 90)) + list(range(30, 50)),
    [100, 101, 102, 100, 101, 102, 100, 101],
]
MAX_TOKENS = 300
SEEDS = [11, 12, 13, 14]


def greedy_and_seeded_requests(max_tokens: int = MAX_TOKENS, **extra) -> list[pb.GenerateRequest]:
    """Each prompt greedy, then each prompt sampled with its seed."""
    return [build_request(p, temperature=0, max_tokens=max_tokens, ignore_eos=True, **extra) for p in PROMPTS] + [
        build_request(p, temperature=0.8, top_p=0.95, max_tokens=max_tokens, ignore_eos=True, seed=s, **extra)
        for p, s in zip(PROMPTS, SEEDS)
    ]


@cache
def in_process_outputs(model: Path, max_tokens: int = MAX_TOKENS) -> list[list[int]]:
    """What greedy_and_seeded_requests give in-process, in the same order."""
    llm = LLM(str(model))
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    greedy = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    sampled = [
        SamplingParams(temperature=0.8, top_p=0.95, max_tokens=max_tokens, ignore_eos=True, seed=s) for s in SEEDS
    ]
    outputs = llm.generate(prompts, greedy, use_tqdm=False) + llm.generate(prompts, sampled, use_tqdm=False)
    llm.close()
    return [o.outputs[0].token_ids for o in outputs]


class Stream(threading.Thread):
    """One Generate call read to its end on its own thread; `first` is set at its first message."""

    def __init__(self, stub, request: pb.GenerateRequest) -> None:
        super().__init__(daemon=True)
        self.request = request
        self.call = stub.Generate(request, timeout=180)
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


def all_streaming(address: str, requests: list[pb.GenerateRequest], cleanup) -> list[Stream]:
    """Start every request on the gateway at `address`; return once each has streamed its first message."""
    channel = grpc.insecure_channel(address)
    cleanup.callback(channel.close)
    streams = [Stream(pb_grpc.GatewayStub(channel), r) for r in requests]
    for s in streams:
        s.start()
    for s in streams:
        assert s.first.wait(90)
    return streams


def join_all(streams: list[Stream], timeout: float = 180) -> None:
    for s in streams:
        s.join(timeout)
    assert not any(s.is_alive() for s in streams), "a stream did not finish"


def num_sequences(verifier_address: str) -> int:
    with grpc.insecure_channel(verifier_address) as channel:
        return pb_grpc.VerifierStub(channel).GetInfo(pb.InfoRequest(), timeout=5).num_sequences


def assert_lossless(model: Path, streams: list[Stream], expected: list[list[int]]) -> None:
    """Every stream ended without error at max_tokens; greedy ones equal the in-process output (up to a
    near tie, where differently shaped passes may round apart), seeded ones exactly."""
    assert all(s.error is None for s in streams), [s.error for s in streams if s.error]
    assert all(s.responses[-1].finish_reason == "length" for s in streams)
    hf = None
    for stream, want in zip(streams, expected):
        if stream.request.sampling.temperature == 0:
            hf = hf or AutoModelForCausalLM.from_pretrained(str(model)).eval()
            assert_same_or_near_tie(hf, list(stream.request.prompt_token_ids), stream.token_ids, want)
        else:
            assert stream.token_ids == want
