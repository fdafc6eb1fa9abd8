"""Where the gateway's verifiers and proposers are: fixed addresses, and DNS names re-resolved on a timer
(splitspec.rpc.targets says what the entries mean). A name that fails to resolve keeps its last
addresses: a resolver hiccup must not drain every pod.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Callable, Generic, Protocol, TypeVar

from splitspec.rpc.targets import Target, resolve_target


class Backend(Protocol):
    address: str
    num_sequences: int
    retired: bool
    superseded: bool
    """A newer backend for the same address takes its new sequences (BackendPool.renew)."""

    def retire(self) -> None: ...

    async def refresh(self) -> bool: ...

    async def close(self) -> None: ...


B = TypeVar("B", bound=Backend)


class BackendPool(Generic[B]):
    """Keeps `backends` (the very list the gateway routes over) equal to what the targets resolve to:
    new addresses join, vanished ones are retired and closed once they hold no sequence."""

    def __init__(
        self, targets: tuple[Target, ...], make: Callable[[str, str | None], B], backends: list[B], kind: str
    ) -> None:
        """make(address, server_name): a backend for the address, whose TLS certificate must name
        server_name (the dns:/// name it was found by), or its own host when None."""
        self.targets = targets
        self.make = make
        self.backends = backends
        self.kind = kind
        self._last: dict[Target, set[str]] = {}

    @property
    def dynamic(self) -> bool:
        return any(t.resolve for t in self.targets)

    async def refresh(self) -> None:
        """Resolve every target once and apply the result."""
        for target in self.targets:
            try:
                self._last[target] = await resolve_target(target)
            except OSError as exc:
                print(f"splitspec gateway: cannot resolve {target.host} ({exc}); keeping its last addresses",
                      file=sys.stderr, flush=True)  # fmt: skip
        self.apply(set().union(*self._last.values()))

    def apply(self, addresses: set[str]) -> None:
        known = {b.address: b for b in self.backends if not b.superseded}
        for address in sorted(addresses - known.keys()):
            self.backends.append(self.make(address, self.server_name(address)))
            if self.dynamic:
                print(f"splitspec gateway: {self.kind} {address} joined", file=sys.stderr, flush=True)
        for backend in self.backends:
            if backend.address in addresses:
                if not backend.superseded:
                    backend.retired = False  # listed again before it was closed
            elif not backend.retired:
                backend.retire()
                if not backend.superseded:
                    print(f"splitspec gateway: {self.kind} {backend.address} left; draining it",
                          file=sys.stderr, flush=True)  # fmt: skip

    async def renew(self) -> None:
        """A new backend, so a new channel, for every address (the client certificate changed on disk):
        it takes new sequences once it has been checked, and the one it supersedes keeps its sequences
        to their end and is closed when it holds none."""
        for old in [b for b in self.backends if not b.retired and not b.superseded]:
            new = self.make(old.address, self.server_name(old.address))
            await new.refresh()
            self.backends.append(new)
            old.superseded = True

    def server_name(self, address: str) -> str | None:
        """The dns:/// name whose addresses include this one: what the pod's certificate names, since
        pods' certificates name their Service and not their passing addresses. None for fixed addresses."""
        return next((t.host for t, found in self._last.items() if t.resolve and address in found), None)

    async def close_drained(self) -> None:
        """Close and drop the retired and superseded backends that hold no sequence any more."""
        for backend in [b for b in self.backends if (b.retired or b.superseded) and b.num_sequences == 0]:
            self.backends.remove(backend)
            await backend.close()


async def keep_resolving(
    pools: list[BackendPool], interval_s: float, client_files_renewed: Callable[[], bool] = lambda: False
) -> None:
    """Re-resolve the pools' names every interval_s; close what has drained in between; open new
    channels when the client TLS files were renewed."""
    while True:
        await asyncio.sleep(interval_s)
        renew = client_files_renewed()
        if renew:
            print("splitspec gateway: client TLS files changed; opening new channels", file=sys.stderr, flush=True)
        for pool in pools:
            await pool.close_drained()
            if pool.dynamic:
                await pool.refresh()
            if renew:
                await pool.renew()
