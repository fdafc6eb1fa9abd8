"""Client deadlines carried into the internal services: a sequence whose client's time has run out is
released by the service that holds it, so its memory is freed even if no release ever arrives (the
gateway died, or its link did).

Deadlines cross the wire as the seconds left when a message was sent (`time_limit_s`), as gRPC's own
timeout header does, so that the hosts' clocks need not agree. The link's delay only makes the limit
later, never earlier."""

from __future__ import annotations

import asyncio
import math
from typing import Callable

import grpc

from splitspec.errors import ServiceError


def check_time_limit(field: str, seconds: float) -> float | None:
    """The limit in seconds, None for 0 (none); INVALID_ARGUMENT naming the field if it is negative or not finite."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{field} must be a finite number of seconds >= 0 (0: none), got {seconds}",
        )
    return seconds or None


def time_left(deadline: float, now: float) -> float:
    """What goes on the wire for a deadline on the monotonic clock: 0 for none, else the seconds left (at
    least a millisecond, so that a deadline just reached is still a limit)."""
    return 0.0 if math.isinf(deadline) else max(deadline - now, 1e-3)


class Expiries:
    """One timer per sequence on the running event loop: `expire(seq_id)` runs when its limit passes."""

    def __init__(self, expire: Callable[[str], None]) -> None:
        self._expire = expire
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def arm(self, seq_id: str, seconds: float) -> None:
        """Start the sequence's timer, unless it has one already (its client's deadline does not move)."""
        if seq_id not in self._timers:
            self._timers[seq_id] = asyncio.get_running_loop().call_later(seconds, self._fire, seq_id)

    def cancel(self, seq_id: str) -> None:
        timer = self._timers.pop(seq_id, None)
        if timer is not None:
            timer.cancel()

    def __len__(self) -> int:
        return len(self._timers)

    def _fire(self, seq_id: str) -> None:
        del self._timers[seq_id]
        self._expire(seq_id)
