"""Which proposer pod a request goes to when the pods remember past outputs (suffix decoding).

A suffix drafter drafts a repeated answer only on the pod that served it first, so related requests
should meet on one pod. Their key: the session id the client sends (gRPC `session_id`, OpenAI `user`),
or else the last PROMPT_TAIL_TOKENS tokens of the prompt, where the text a request works on usually
sits (the code or document after the instruction, then the chat template's closing tokens). Pods are
ranked per key by rendezvous hashing, so a key keeps its pod while others come and go; the first pod
in that order whose load is within bounds takes the request, so a hot key never piles onto one pod.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from typing import Protocol, TypeVar

PROMPT_TAIL_TOKENS = 64
MAX_SESSION_ID_CHARS = 256


class _Pod(Protocol):
    address: str
    num_sequences: int


def affinity_key(session_id: str, prompt_token_ids: list[int]) -> bytes:
    if session_id:
        return b"session:" + session_id.encode()
    return b"prompt:" + array("i", prompt_token_ids[-PROMPT_TAIL_TOKENS:]).tobytes()


def rendezvous_rank(key: bytes, address: str) -> bytes:
    """A pod's place for the key: the pods in descending order of it are the key's order of preference."""
    return hashlib.blake2b(key + b"\0" + address.encode(), digest_size=8).digest()


P = TypeVar("P", bound=_Pod)


def pick_pod(pods: Sequence[P], key: bytes) -> P | None:
    """The pod the key prefers among those at most twice (plus two) as loaded as the least loaded one."""
    if not pods:
        return None
    bound = 2 * min(p.num_sequences for p in pods) + 2
    ranked = sorted(pods, key=lambda p: rendezvous_rank(key, p.address), reverse=True)
    return next(p for p in ranked if p.num_sequences <= bound)
