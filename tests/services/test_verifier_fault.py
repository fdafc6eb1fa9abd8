"""Health tells the truth (issue 17): a verifier whose pass raises turns NOT_SERVING for good, its
sequences move to another verifier with nothing lost, and where there is none the request fails with
UNAVAILABLE and a message in the client's terms, without hanging. The fault is planted by
tests/faulty_verifier.py, which makes the verifier's Nth pass raise."""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
from e2e_requests import generate, generate_concurrently, greedy_request
from grpc_health.v1 import health_pb2
from service_stack import health_status, start_service, wait_for

from splitspec import LLM, SamplingParams

pytestmark = pytest.mark.e2e

PROMPTS = [[5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6], [17, 3, 17, 3, 4]]
MAX_TOKENS = 40


def test_a_pass_that_raises_turns_the_verifier_not_serving_and_its_sequences_move_or_fail_cleanly(tiny_llama, tmp_path):
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    plain = LLM(str(tiny_llama)).generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    verifier = ["serve-verifier", "--model", str(tiny_llama)]
    with ExitStack() as cleanup:
        fault = [sys.executable, str(Path(__file__).resolve().parents[1] / "faulty_verifier.py"), "4"]
        faulty = start_service("faulty-verifier", verifier, tmp_path, launcher=fault)
        cleanup.callback(faulty.stop)
        sound = start_service("verifier", verifier, tmp_path)
        cleanup.callback(sound.stop)
        gateway_args = ["serve-gateway", "--model", str(tiny_llama), "--proposers", "", "--method", "ngram"]
        both = start_service("gateway", [*gateway_args, "--verifiers", f"{faulty.address},{sound.address}"], tmp_path)
        cleanup.callback(both.stop)

        # two requests at once: one on each verifier, by load
        requests = [greedy_request(p, max_tokens=MAX_TOKENS) for p in PROMPTS]
        assert generate_concurrently(both.address, requests) == [o.outputs[0].token_ids for o in plain]
        assert "planted fault: pass 4 fails" in faulty.logs(), "the fault struck a sequence, which moved"
        assert wait_for(lambda: health_status(faulty.address) == health_pb2.HealthCheckResponse.NOT_SERVING, 5)
        assert health_status(sound.address) == health_pb2.HealthCheckResponse.SERVING

        only_faulty = start_service(
            "gateway-to-the-faulty-one",
            [*gateway_args, "--verifiers", faulty.address, "--verifier-wait-s", "1"],
            tmp_path,
            wait=False,
        )
        cleanup.callback(only_faulty.stop)
        assert wait_for(lambda: health_status(only_faulty.address) == health_pb2.HealthCheckResponse.NOT_SERVING, 30)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            generate(only_faulty.address, greedy_request(PROMPTS[0], max_tokens=MAX_TOKENS), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() - started < 10
        assert "Error" not in err.value.details() and "Traceback" not in err.value.details(), err.value.details()
        assert faulty.proc.poll() is None, "the process stays up, to be probed and replaced"
