"""The separate-hosts helper leaves nothing behind, even when a test left a process running on a host."""

from __future__ import annotations

import subprocess

from separate_hosts import SeparateHosts, _exists
from service_stack import process_gone, wait_for


def test_closing_removes_every_host_even_with_a_process_still_running_on_one():
    with SeparateHosts() as hosts:
        first, second = hosts.add("first"), hosts.add("second")
        left_running = subprocess.Popen(second.command(["sleep", "60"]))
    assert not _exists(first.netns) and not _exists(second.netns)
    assert wait_for(lambda: left_running.poll() is not None and process_gone(left_running.pid), timeout=10)
