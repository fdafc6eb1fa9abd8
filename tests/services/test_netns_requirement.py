"""CI cannot go green with the separate-hosts suites skipped (tests/conftest.py, .ci/run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

TESTS = Path(__file__).resolve().parents[1]


def run_host_tests_where_netns_fails(tmp_path: Path, require: bool) -> subprocess.CompletedProcess:
    """tests/services/test_separate_hosts.py with an `ip` that fails as it does in an unprivileged container."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "ip").write_text(
        '#!/bin/sh\necho "mount --make-shared /run/netns failed: Operation not permitted" >&2\nexit 1\n'
    )
    (fake_bin / "ip").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(TESTS.parent))
    env.pop("SPLITSPEC_REQUIRE_NETNS", None)
    if require:
        env["SPLITSPEC_REQUIRE_NETNS"] = "1"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(TESTS / "services" / "test_separate_hosts.py"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )


def test_without_the_requirement_host_tests_skip_where_netns_fails(tmp_path):
    result = run_host_tests_where_netns_fails(tmp_path, require=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout, result.stdout


def test_with_the_requirement_a_failing_netns_fails_the_run(tmp_path):
    result = run_host_tests_where_netns_fails(tmp_path, require=True)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "SPLITSPEC_REQUIRE_NETNS=1 but pods cannot run on separate hosts here" in output, output
    assert "Operation not permitted" in output
