"""Which verifier a sequence starts on when the verifiers cache prefixes: the one most likely to hold
its prompt's beginning, within load bounds.

Requests that share a beginning (a chat's system prompt and history, an agent's instructions) share a
key: the prompt's first ROUTING_TOKENS tokens, or all its whole blocks of BLOCK_TOKENS when it is
shorter (never its last token, which a pass computes anyway). Verifiers are ranked per key by
rendezvous hashing, as proposer affinity ranks pods (gateway_svc.proposer_affinity): every gateway
that sees the same verifiers ranks them the same, without talking to the others, and a key keeps its
verifier while others come and go. The first verifier in that order whose load is within bounds
takes the sequence, so a hot prefix spreads rather than piling onto one verifier; the others follow,
least loaded first, for when it is full or fails. A moved sequence is placed the same way from its
whole history, so it goes where its prefix most likely is.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Protocol, TypeVar

from gateway_svc.proposer_affinity import rendezvous_rank

ROUTING_TOKENS = 256
BLOCK_TOKENS = 16  # the verifiers' default KV block size: shorter beginnings are never cached


class _Verifier(Protocol):
    address: str

    @property
    def load(self) -> float: ...


V = TypeVar("V", bound=_Verifier)


def prefix_key(token_ids: list[int]) -> bytes | None:
    """The routing key of a sequence's tokens; None when it has no whole block before its last token."""
    whole = min(ROUTING_TOKENS, (len(token_ids) - 1) // BLOCK_TOKENS * BLOCK_TOKENS)
    if whole <= 0:
        return None
    return b"prefix:" + array("q", token_ids[:whole]).tobytes()


def verifier_order(verifiers: Sequence[V], key: bytes | None, load_slack: float = 0.125) -> list[V]:
    """The order to try verifiers in: least loaded first without a key; with one, the key's rendezvous
    order among those at most load_slack (a share of a verifier's sequence slots) more loaded than
    the least loaded, then the rest, least loaded first."""
    by_load = sorted(verifiers, key=lambda v: v.load)
    if key is None or not by_load:
        return by_load
    bound = by_load[0].load + load_slack
    within = sorted(
        (v for v in by_load if v.load <= bound), key=lambda v: rendezvous_rank(key, v.address), reverse=True
    )
    return within + [v for v in by_load if v.load > bound]
