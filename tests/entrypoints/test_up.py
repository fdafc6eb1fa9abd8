"""`splitspec up` starts three processes that serve together, and SIGINT stops all of them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from service_stack import child_pids, descendant_pids, free_port, health_status, process_gone, wait_for

from splitspec import LLM, SamplingParams
from splitspec.entrypoints.client import build_request, stream_generate
from splitspec.rpc.throwaway_certs import make_stack_certificates
from splitspec.rpc.tls import ClientTls
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e


@contextmanager
def running_up(model: Path, log_path: Path, *flags: str, credentials: grpc.ChannelCredentials | None = None):
    """`splitspec up` on free ports, serving: (its process, the gateway's address, the three ports).
    Everything it started is killed on exit, whatever happened. credentials: to reach a TLS gateway."""
    ports = [free_port(), free_port(), free_port()]
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "splitspec", "up", "--model", str(model), "--port", str(ports[0])]
        + ["--verifier-port", str(ports[1]), "--proposer-port", str(ports[2]), "-k", "3", *flags],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, TOKENIZERS_PARALLELISM="false"),
    )
    gateway = f"127.0.0.1:{ports[0]}"
    try:
        deadline = time.monotonic() + 120
        while health_status(gateway, credentials=credentials) != health_pb2.HealthCheckResponse.SERVING:
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        yield proc, gateway, ports
    finally:
        family = descendant_pids(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # up stops its services itself
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in family:
            if not process_gone(pid):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        log.close()


def _generate(gateway: str, prompt: list[int], max_tokens: int) -> list[int]:
    with grpc.insecure_channel(gateway) as channel:
        responses = pb_grpc.GatewayStub(channel).Generate(
            build_request(prompt, temperature=0, max_tokens=max_tokens, ignore_eos=True)
        )
        return [t for r in responses for t in r.token_ids]


@pytest.mark.parametrize("tensor_parallel_size", [1, 2])
def test_up_serves_and_ctrl_c_stops_all_three(tiny_llama, tmp_path, tensor_parallel_size):
    """With two ranks the verifier owns one worker process; it stops with the rest."""
    flags = ("--device", "cpu", "--tensor-parallel-size", str(tensor_parallel_size))
    with running_up(tiny_llama, tmp_path / "up.log", *flags) as (proc, gateway, _):
        children = child_pids(proc.pid)
        assert len(children) == 3
        workers = [w for child in children for w in child_pids(child)]
        assert len(workers) == tensor_parallel_size - 1
        assert len(_generate(gateway, [5, 6, 7, 5, 6], 8)) == 8
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        for child in children + workers:
            assert not os.path.exists(f"/proc/{child}") or open(f"/proc/{child}/stat").read().split()[2] == "Z"


def test_up_puts_a_delaying_proxy_on_each_of_the_gateway_s_links(tiny_llama, tmp_path):
    prompt = [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    expected = LLM(str(tiny_llama)).generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
    log_path = tmp_path / "up.log"
    with running_up(tiny_llama, log_path, "--network-delay-ms", "2") as (proc, gateway, ports):
        services = descendant_pids(proc.pid)
        assert _generate(gateway, prompt, 24) == expected[0].outputs[0].token_ids
        log = log_path.read_text()
        for name, port in (("verifier", ports[1]), ("proposer", ports[2])):
            line = next(line for line in log.splitlines() if f"gateway -> {name} through" in line)
            assert "2.0 ms each way" in line and not line.endswith(f":{port}, 2.0 ms each way"), line
    assert len(services) == 3 and wait_for(lambda: all(process_gone(pid) for pid in services), timeout=10), (
        "a service outlived the test"
    )


def test_up_with_a_tls_dir_serves_tls_everywhere_and_mutual_tls_between_the_services(tiny_llama, tmp_path):
    prompt = [5, 6, 7, 8, 9, 5, 6, 7]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    expected = LLM(str(tiny_llama)).generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
    tls_dir = tmp_path / "tls"
    make_stack_certificates(tls_dir, [])  # the CA `up` finds and keeps; it makes the rest itself
    ca = tls_dir / "ca.pem"
    trusting = grpc.ssl_channel_credentials(ca.read_bytes())
    log_path = tmp_path / "up.log"
    with running_up(tiny_llama, log_path, "--tls-dir", str(tls_dir), credentials=trusting) as (_, gateway, ports):
        request = build_request(prompt, temperature=0, max_tokens=12, ignore_eos=True)
        streamed = [t for r in stream_generate(gateway, request, 60, tls=ClientTls(str(ca))) for t in r.token_ids]
        assert streamed == expected[0].outputs[0].token_ids
        assert f"clients trust {ca}" in log_path.read_text()
        assert health_status(gateway) is None, "no plaintext to the gateway"
        for port in ports[1:]:
            assert health_status(f"127.0.0.1:{port}", credentials=trusting) is None, "no way in without a certificate"
