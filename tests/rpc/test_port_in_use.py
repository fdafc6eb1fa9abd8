"""A second server started on a taken port exits with a one-line error; it never shares the port.

gRPC turns SO_REUSEPORT on by default, with which two servers bind one port and the kernel splits
connections between them (splitspec.rpc.grpc_server.NO_SHARED_PORT turns it off)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from grpc_health.v1 import health_pb2
from service_stack import health_status, start_service

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("port_flag", ["--port", "--health-port"])
def test_a_second_server_on_a_taken_port_exits_with_a_clear_error(tmp_path, port_flag):
    first = start_service("proposer", ["serve-proposer", "-k", "3"], tmp_path, health_port=True)
    try:
        taken = (first.address if port_flag == "--port" else first.health_address).rsplit(":", 1)[1]
        other_flags = ["--port", "0"] if port_flag == "--health-port" else []
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "splitspec",
                "serve-proposer",
                "--host",
                "127.0.0.1",
                *other_flags,
                port_flag,
                taken,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode != 0
        assert f"cannot listen on 127.0.0.1:{taken} (is the port in use?)" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr, second.stderr
        assert health_status(first.address) == health_pb2.HealthCheckResponse.SERVING
    finally:
        first.stop()
