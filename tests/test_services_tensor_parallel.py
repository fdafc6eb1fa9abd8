"""The verifier service with a tensor-parallel target (two ranks, gloo), through the gateway."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import grpc
import pytest
from greedy_reference import assert_same_or_near_tie
from grpc_health.v1 import health_pb2
from service_stack import health_status, running_stack
from test_services_e2e import PROMPTS, generate_concurrently, greedy_request, plain_greedy  # noqa: F401
from transformers import AutoModelForCausalLM

from protos import splitspec_v1_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] == "Z"
    except FileNotFoundError:
        return True


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_two_ranks_through_the_gateway_equal_in_process(tiny_llama, tmp_path, plain_greedy):  # noqa: F811
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    with running_stack(tiny_llama, tmp_path, verifier_args=("--tensor-parallel-size", "2")) as stack:
        assert len(_children(stack.verifier.proc.pid)) == 1, "one worker process besides the verifier"
        got = generate_concurrently(stack.gateway.address, [greedy_request(p) for p in PROMPTS])
    for prompt, tokens, expected in zip(PROMPTS, got, plain_greedy):
        assert_same_or_near_tie(hf, prompt, tokens, expected)


def test_a_dead_worker_fails_in_flight_requests_unavailable_and_the_verifier_not_serving(tiny_llama, tmp_path):
    """The only verifier: the gateway has nowhere to move the stream (--verifier-wait-s 0), so the
    client gets the verifier's UNAVAILABLE."""
    verifier_args = ("--tensor-parallel-size", "2")
    with running_stack(
        tiny_llama, tmp_path, verifier_args=verifier_args, gateway_args=("--verifier-wait-s", "0")
    ) as stack:
        [worker] = _children(stack.verifier.proc.pid)
        with grpc.insecure_channel(stack.gateway.address) as channel:
            call = pb_grpc.GatewayStub(channel).Generate(greedy_request(PROMPTS[0], max_tokens=400), timeout=60)
            next(call)
            started = time.monotonic()
            os.kill(worker, signal.SIGKILL)
            with pytest.raises(grpc.RpcError) as err:
                list(call)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < 10, "within the keepalive timeout"
        serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert _wait_for(lambda: health_status(stack.verifier.address) == serving, 10)
        assert stack.verifier.proc.poll() is None, "the verifier stays up to report its state"
        verifier_pid = stack.verifier.proc.pid
    assert _gone(worker) and not _children(verifier_pid)
