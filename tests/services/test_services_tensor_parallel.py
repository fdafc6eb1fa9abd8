"""The verifier service with a tensor-parallel target (two ranks, gloo), through the gateway."""

from __future__ import annotations

import os
import signal
import time

import grpc
import pytest
from e2e_requests import PROMPTS, generate_concurrently, greedy_request
from greedy_reference import assert_same_or_near_tie
from grpc_health.v1 import health_pb2
from service_stack import child_pids, health_status, process_gone, running_stack, wait_for
from transformers import AutoModelForCausalLM

from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_two_ranks_through_the_gateway_equal_in_process(tiny_llama, tmp_path, plain_greedy):
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    with running_stack(tiny_llama, tmp_path, verifier_args=("--tensor-parallel-size", "2")) as stack:
        assert len(child_pids(stack.verifier.proc.pid)) == 1, "one worker process besides the verifier"
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
        [worker] = child_pids(stack.verifier.proc.pid)
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
        assert wait_for(lambda: health_status(stack.verifier.address) == serving, 10)
        assert stack.verifier.proc.poll() is None, "the verifier stays up to report its state"
        verifier_pid = stack.verifier.proc.pid
    assert process_gone(worker) and not child_pids(verifier_pid)
