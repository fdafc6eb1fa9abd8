"""The proposers a verifier may call for remote drafts (serve-verifier --proposers).

A step's remote_draft names the proposer the verifier then opens a channel to. Unchecked, whoever can
send steps could make the verifier connect anywhere its network reaches; so the address must be one
the operator listed: a `host:port` entry itself, a `dns:///name:port` entry's own `name:port`, or
one of the addresses that name resolves to (what a gateway given the same entry names). Names are
resolved on a miss, at most once a second each, so pods that joined since are found without a
restart; a name that fails to resolve keeps its last addresses.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Callable

import grpc

from splitspec.errors import ServiceError
from splitspec.rpc.targets import Target, resolve_target

RESOLVE_EVERY_S = 1.0
"""The least time between two resolutions of one name, however many unknown addresses steps name."""


class ProposerAllowList:
    def __init__(self, targets: tuple[Target, ...], clock: Callable[[], float] = time.monotonic) -> None:
        self.targets = targets
        self._clock = clock
        self._listed = {t.address for t in targets}
        self._names = [t for t in targets if t.resolve]
        self._resolved: dict[Target, set[str]] = {t: set() for t in self._names}
        self._resolved_at: dict[Target, float] = {}
        self._locks = {t: asyncio.Lock() for t in self._names}

    async def check(self, address: str) -> None:
        """Return if the verifier may call the proposer at `address`; PERMISSION_DENIED otherwise."""
        if not self.targets:
            raise ServiceError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"remote_draft.proposer: {address}: this verifier may call no proposer; remote drafts "
                "(gateway --direct-drafts) need serve-verifier --proposers",
            )
        if self._allows(address):
            return
        await asyncio.gather(*(self._resolve(t) for t in self._names))
        if not self._allows(address):
            raise ServiceError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"remote_draft.proposer: {address} is not among the proposers this verifier may call; "
                "list it in serve-verifier --proposers",
            )

    def _allows(self, address: str) -> bool:
        return address in self._listed or any(address in found for found in self._resolved.values())

    async def _resolve(self, target: Target) -> None:
        """Resolve the name again, unless it was less than RESOLVE_EVERY_S ago. Steps that miss while it
        resolves wait for that answer rather than start another."""
        async with self._locks[target]:
            last = self._resolved_at.get(target)
            if last is not None and self._clock() - last < RESOLVE_EVERY_S:
                return
            self._resolved_at[target] = self._clock()
            try:
                self._resolved[target] = await resolve_target(target)
            except OSError as exc:
                print(f"splitspec verifier: cannot resolve {target.host} ({exc}); keeping its last addresses",
                      file=sys.stderr, flush=True)  # fmt: skip
