"""Where a request's sequence runs: which verifier it starts on, which proposer drafts for it, and how
it moves when either drains or fails (failover), and is released when it ends.

A verifier is chosen by the load every gateway sharing it reports, a proposer by this gateway's own
count (or, for drafters that remember outputs, by affinity). Losing either loses no output: the gateway
holds every committed token, so a sequence starts again from them on another verifier, and a proposer
left behind only costs drafts.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc

from gateway_svc.backends import ProposerBackend, VerifierBackend
from gateway_svc.prefix_routing import prefix_key, verifier_order
from gateway_svc.proposer_affinity import pick_pod
from gateway_svc.request_state import Request
from splitspec.drafts import HiddenStates
from splitspec.errors import ServiceError
from splitspec.metrics import RequestMetrics
from splitspec.sequence import Sequence
from splitspec_protos import splitspec_v1_pb2 as pb


@dataclass
class Placement:
    verifiers: list[VerifierBackend]
    proposers: list[ProposerBackend]
    metrics: RequestMetrics
    verifier_wait_s: float = 30.0
    """How long a request waits for a verifier when none is reachable (unless its deadline is sooner)."""
    prefix_routing: bool = True
    """Start a sequence where its prompt's beginning is most likely cached (gateway_svc.prefix_routing)."""
    _checking: asyncio.Future | None = field(default=None, init=False)

    async def start_on_a_verifier(
        self,
        seq: Sequence,
        deadline: float,
        trace_context: pb.TraceContext | None,
        hidden_states: HiddenStates = HiddenStates.NONE,
        hidden_layers: tuple[int, ...] = (),
    ) -> VerifierBackend:
        """Start the sequence, with its committed tokens so far, on a live verifier: with prefix routing,
        the one its tokens' beginning prefers among those within load bounds, else the least loaded (by
        what each reports, so that gateways sharing it spread out too); one that is full or fails is
        passed over for the next, with backoff while none is left. deadline: the client's; waiting for
        a verifier ends there or after `verifier_wait_s`, whichever comes first."""
        wait_until = min(deadline, time.monotonic() + self.verifier_wait_s)
        delay = 0.05
        key = prefix_key(seq.tokens) if self.prefix_routing else None
        while True:
            full: list[ServiceError] = []
            live = sorted(
                (v for v in self.verifiers if v.info is not None and not v.superseded),
                key=lambda v: (v.load, -v.kv_free_share),
            )
            for verifier in verifier_order(live, key):
                verifier.num_sequences += 1  # counted before the first await, so concurrent requests spread out
                try:
                    await verifier.start(
                        seq.seq_id,
                        seq.tokens,
                        seq.params,
                        seq.seed,
                        hidden_states,
                        trace_context,
                        deadline,
                        hidden_layers,
                        seq.token_ban,
                        seq.penalties,
                        len(seq.prompt_token_ids),
                    )
                    return verifier
                except (ConnectionError, ServiceError) as exc:
                    verifier.num_sequences -= 1
                    if isinstance(exc, ServiceError) and exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        full.append(exc)
                    elif not verifier_lost(exc):
                        raise
                    else:
                        verifier.mark_down()
                except BaseException:  # the request was cancelled, perhaps with the start already sent
                    verifier.num_sequences -= 1
                    asyncio.get_running_loop().create_task(self._release(seq.seq_id, verifier, None))
                    raise
            if full:  # every live verifier is full: that is the answer, not an outage
                raise full[0]
            left = wait_until - time.monotonic()
            if left <= 0:
                raise ServiceError(
                    grpc.StatusCode.UNAVAILABLE,
                    "no verifier is reachable; start one (splitspec serve-verifier) and retry",
                )
            await self._check_verifiers(min(left, 2.0))
            await asyncio.sleep(max(0.0, min(delay, wait_until - time.monotonic())))
            delay = min(2 * delay, 1.0)

    async def _check_verifiers(self, timeout: float) -> None:
        """Ask every verifier how it is now, rather than wait for the gateway's next check: one passed
        over after a check that failed under load may answer again. Requests waiting at once share one
        check."""
        if self._checking is None or self._checking.done():
            checks = asyncio.gather(*(v.refresh_info(timeout=timeout) for v in self.verifiers))
            self._checking = asyncio.ensure_future(checks)
        await asyncio.wait([self._checking], timeout=timeout)

    def draining(self, verifier: VerifierBackend) -> bool:
        """Whether the sequence should leave `verifier`: its health says draining (or it stopped
        answering), and another verifier is live."""
        return verifier.info is None and any(
            v.info is not None and not v.superseded for v in self.verifiers if v is not verifier
        )

    async def move(self, req: Request, leaving: VerifierBackend, failover: bool = True) -> VerifierBackend:
        """Release the sequence on one verifier and start it, from its committed tokens, on another
        (or the same one again). Hidden states not yet passed on are dropped: the new verifier sends them
        all again. failover False: the move is for that resend alone (ProposerSlot.needs_states)."""
        seq = req.seq
        event = {"splitspec.from": leaving.address, "splitspec.tokens": len(seq.tokens)}
        if failover:
            self.leave(seq.seq_id, leaving, None)
            self.metrics.verifier_failovers.add(1)
            req.span.add_event("verifier failover", event)
        else:  # the verifier may well take it again: released before it starts there anew
            leaving.num_sequences -= 1
            leaving.forget(seq.seq_id)
            await self._release(seq.seq_id, leaving, None)
            req.span.add_event("re-prefill for the new proposer's hidden states", event)
        req.slot.feed.hidden = None
        req.slot.needs_states = False
        return await self.start_on_a_verifier(
            seq, req.deadline, req.trace_context, req.plan.hidden_states, req.plan.hidden_layers
        )

    def next_proposer(
        self, exclude: ProposerBackend | None = None, affinity: bytes | None = None
    ) -> ProposerBackend | None:
        """Among the proposers taking new sequences: the one the affinity key prefers, if given and
        within load bounds, else the one that serves the fewest of this gateway's sequences."""
        candidates = [p for p in self.proposers if p.takes_new and p is not exclude]
        if affinity is not None:
            return pick_pod(candidates, affinity)
        return min(candidates, key=lambda p: p.num_sequences, default=None)

    def available_proposer(self, req: Request) -> bool:
        """Whether the sequence has a proposer that takes drafts now, moving it off one that does not
        (draining, or down) to the least loaded other; a draining proposer exits once every sequence
        has left it."""
        slot = req.slot
        if slot.backend is not None and slot.backend.available:
            return True
        replacement = self.next_proposer(exclude=slot.backend, affinity=slot.affinity)
        if replacement is None:
            return False
        left = slot.use(replacement)
        if left is not None:
            self.leave(req.seq.seq_id, None, left)
            self.metrics.proposer_failovers.add(1)
            slot.moves += 1
            slot.needs_states = req.plan.hidden_states == HiddenStates.ALL
            req.span.add_event("proposer failover", {"splitspec.from": left.address})
        return True

    def leave(
        self,
        seq_id: str,
        verifier: VerifierBackend | None,
        proposer: ProposerBackend | None,
        final: tuple[int, list[int]] | None = None,
    ) -> None:
        """Stop counting the sequence on its verifier and release it there and on its proposer.
        final: (what the proposer holds, the sequence's tokens), for it to keep the rest (ProposerBackend.release)."""
        if verifier is not None:
            verifier.num_sequences -= 1
            verifier.forget(seq_id)
        asyncio.get_running_loop().create_task(self._release(seq_id, verifier, proposer, final))

    @staticmethod
    async def _release(
        seq_id: str,
        verifier: VerifierBackend | None,
        proposer: ProposerBackend | None,
        final: tuple[int, list[int]] | None = None,
    ) -> None:
        for backend in (verifier, proposer):
            if backend is None:
                continue
            try:
                await (backend.release(seq_id, *(final or ())) if backend is proposer else backend.release(seq_id))
            except (ConnectionError, asyncio.TimeoutError, ServiceError, grpc.aio.UsageError):
                pass  # a backend that is gone (or closed by discovery) has dropped the sequence with its stream


def verifier_lost(exc: BaseException) -> bool:
    """Whether a verifier's failure means "try another": its stream broke, it is unavailable, or it no
    longer knows the sequence (it restarted)."""
    if isinstance(exc, ConnectionError):
        return True
    return isinstance(exc, ServiceError) and exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND)
