"""Where peers are: `host:port` entries and `dns:///name:port` names, as `--verifiers` and `--proposers` take.

`dns:///name:port` stands for every address `name` resolves to, as a Kubernetes headless Service
lists one address per ready pod. Names go through the system resolver (getaddrinfo: /etc/hosts,
then DNS), so a service sees what any program on its host sees.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

DNS_SCHEME = "dns:///"


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    resolve: bool
    """A dns:/// name (every address it resolves to, re-resolved) rather than one fixed address."""

    @property
    def address(self) -> str:
        return join_host_port(self.host, self.port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_targets(text: str) -> tuple[Target, ...]:
    """Comma-separated `host:port` and `dns:///name:port` entries; ValueError naming the bad one."""
    targets = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        resolve = entry.startswith(DNS_SCHEME)
        hostport = entry[len(DNS_SCHEME) :] if resolve else entry
        host, sep, port = hostport.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{entry!r} is not host:port or dns:///name:port")
        targets.append(Target(host, int(port), resolve))
    return tuple(targets)


async def resolve_target(target: Target) -> set[str]:
    """The addresses a target stands for now; socket.gaierror when its name does not resolve."""
    if not target.resolve:
        return {target.address}
    infos = await asyncio.get_running_loop().getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    return {join_host_port(info[4][0], target.port) for info in infos}
