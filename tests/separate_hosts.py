"""Pods on separate hosts, for tests: a bridge on this machine and one network namespace per pod, each
with its own address on a veth pair, so that traffic between services crosses real interfaces.

Only addresses made here are used (a /24 under 10.0.0.0/8 that no route of this machine covers), and
everything made is removed on exit, even when the test fails. Each namespace also gets its own
/etc/hosts (`ip netns exec` mounts /etc/netns/NAME/hosts over it), which discovery tests edit.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import signal
import subprocess
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

NETNS_ETC = Path("/etc/netns")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def why_not_possible() -> str | None:
    """Why this machine cannot make hosts (None when it can)."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    probe = f"ssprobe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class Host:
    name: str
    netns: str
    ip: str

    def command(self, argv: list[str]) -> list[str]:
        """argv run on this host."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def set_link(self, up: bool) -> None:
        """Plug or unplug this host's network cable."""
        _ip("-n", self.netns, "link", "set", "eth0", "up" if up else "down")

    def write_hosts(self, names: dict[str, list[str]]) -> None:
        """This host's /etc/hosts: each name resolves to its addresses, in order. Written in place: the
        processes on the host see the file that was mounted when they started."""
        lines = ["127.0.0.1 localhost"] + [f"{ip} {name}" for name, ips in names.items() for ip in ips]
        (NETNS_ETC / self.netns / "hosts").write_text("\n".join(lines) + "\n")


class SeparateHosts:
    """A context manager; `add(name)` makes a host on the shared bridge."""

    def __init__(self) -> None:
        reason = why_not_possible()
        if reason is not None:
            pytest.skip(f"cannot run pods on separate hosts: {reason}")
        self.tag = f"{os.getpid() % 100000:05d}"
        self.bridge = f"ss{self.tag}b"
        self.subnet = _unused_subnet()
        self.hosts: list[Host] = []

    def __enter__(self) -> SeparateHosts:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.subnet[254]}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, name: str) -> Host:
        index = len(self.hosts) + 1
        host = Host(name, f"ss{self.tag}-{name}", str(self.subnet[index]))
        self.hosts.append(host)  # before it exists, so that close() removes what was made of it
        veth = f"ss{self.tag}v{index}"
        _ip("netns", "add", host.netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")
        (NETNS_ETC / host.netns).mkdir(parents=True, exist_ok=True)
        host.write_hosts({})
        return host

    def close(self) -> None:
        """Kill whatever still runs on the hosts, then remove them, retrying a deletion that fails while
        the killed processes exit (a CI rehearsal once left two hosts' names behind)."""
        for host in self.hosts:
            for pid in _ip("netns", "pids", host.netns, check=False).stdout.split():
                with suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        for index, host in enumerate(self.hosts, start=1):
            deadline = time.monotonic() + 10
            while _ip("netns", "del", host.netns, check=False).returncode != 0 and _exists(host.netns):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"network namespace {host.netns} cannot be deleted")
                time.sleep(0.1)  # the killed processes are still exiting
            _ip("link", "del", f"ss{self.tag}v{index}", check=False)
            shutil.rmtree(NETNS_ETC / host.netns, ignore_errors=True)
        _ip("link", "del", self.bridge, check=False)


def _exists(netns: str) -> bool:
    return netns in _ip("netns", "list", check=False).stdout.split()


def _unused_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.200.0.0/13 that overlaps no route this machine has."""
    routes = [
        ipaddress.ip_network(line.split()[0], strict=False)
        for line in _ip("-4", "route", "show", "table", "all").stdout.splitlines()
        if line and line.split()[0][0].isdigit()
    ]
    candidates = list(ipaddress.ip_network("10.200.0.0/13").subnets(new_prefix=24))
    random.shuffle(candidates)
    for subnet in candidates:
        if not any(subnet.overlaps(r) for r in routes):
            return subnet
    pytest.skip("cannot run pods on separate hosts: no free /24 in 10.200.0.0/13")
