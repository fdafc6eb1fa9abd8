"""`splitspec up` starts three processes that serve together, and SIGINT stops all of them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2
from service_stack import child_pids, free_port, health_status

from protos import splitspec_v1_pb2_grpc as pb_grpc
from splitspec.entrypoints.client import build_request

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("tensor_parallel_size", [1, 2])
def test_up_serves_and_ctrl_c_stops_all_three(tiny_llama, tmp_path, tensor_parallel_size):
    """With two ranks the verifier owns one worker process; it stops with the rest."""
    ports = [free_port(), free_port(), free_port()]
    log = open(tmp_path / "up.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "splitspec",
            "up",
            "--model",
            str(tiny_llama),
            "--port",
            str(ports[0]),
            "--verifier-port",
            str(ports[1]),
            "--proposer-port",
            str(ports[2]),
            "-k",
            "3",
            "--device",
            "cpu",
            "--tensor-parallel-size",
            str(tensor_parallel_size),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, TOKENIZERS_PARALLELISM="false"),
    )
    gateway = f"127.0.0.1:{ports[0]}"
    try:
        deadline = time.monotonic() + 120
        while health_status(gateway) != health_pb2.HealthCheckResponse.SERVING:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.2)
        children = child_pids(proc.pid)
        assert len(children) == 3
        workers = [w for child in children for w in child_pids(child)]
        assert len(workers) == tensor_parallel_size - 1
        with grpc.insecure_channel(gateway) as channel:
            responses = list(
                pb_grpc.GatewayStub(channel).Generate(
                    build_request([5, 6, 7, 5, 6], temperature=0, max_tokens=8, ignore_eos=True)
                )
            )
        assert sum(len(r.token_ids) for r in responses) == 8
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        for child in children + workers:
            assert not os.path.exists(f"/proc/{child}") or open(f"/proc/{child}/stat").read().split()[2] == "Z"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for child in child_pids(proc.pid):
            os.kill(child, signal.SIGKILL)
        log.close()
