"""What the verifier accepts from a proposer. A draft's q enters the acceptance test min(1, p/q) and the
residual max(0, p - q): a q that is not a distribution over the vocabulary, or that gives the drafted
token no mass, would bend the output distribution, which is the one thing never allowed. So each is
checked, and refused with INVALID_ARGUMENT naming the field, before any of it reaches a pass.
"""

from __future__ import annotations

import grpc
import torch

from splitspec import draft_tree
from splitspec.drafts import Draft
from splitspec.errors import ServiceError

MAX_SEQ_ID_BYTES = 128
Q_SUM_TOLERANCE = 1e-6


def _refuse(field: str, problem: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {problem}")


def check_seq_id(seq_id: str) -> None:
    """Non-empty, at most 128 bytes, printable ASCII."""
    if not seq_id:
        raise _refuse("seq_id", "empty")
    if len(seq_id) > MAX_SEQ_ID_BYTES or not (seq_id.isascii() and seq_id.isprintable()):
        raise _refuse("seq_id", f"must be 1 to {MAX_SEQ_ID_BYTES} printable ASCII characters")


def check_draft(draft: Draft, vocab_size: int) -> None:
    """Every draft token in the vocabulary; every sparse q a distribution over it (ids unique and in
    range, one probability per id, each finite and >= 0, summing to at most 1 + 1e-6) in which the
    drafted token has probability > 0; a tree's siblings verifiable together (check_siblings)."""
    if draft.parents is not None:
        check_siblings(draft)
    for i, (token, q) in enumerate(zip(draft.token_ids, draft.q)):
        if not 0 <= token < vocab_size:
            raise _refuse(f"drafts[{i}].token_id", f"{token} is outside the vocabulary [0, {vocab_size})")
        if q is None:
            continue
        ids, probs = q.token_ids, q.probs
        if ids.numel() != probs.numel():
            raise _refuse(f"drafts[{i}].q", f"{ids.numel()} token ids but {probs.numel()} probabilities")
        if ids.numel() == 0:
            raise _refuse(f"drafts[{i}].q", "empty: leave q unset for a one-hot draft")
        if bool(((ids < 0) | (ids >= vocab_size)).any()):
            raise _refuse(f"drafts[{i}].q.token_ids", f"an id is outside the vocabulary [0, {vocab_size})")
        if torch.unique(ids).numel() != ids.numel():
            raise _refuse(f"drafts[{i}].q.token_ids", "an id appears twice")
        if not bool(torch.isfinite(probs).all()) or bool((probs < 0).any()):
            raise _refuse(f"drafts[{i}].q.probs", "every probability must be finite and >= 0")
        total = float(probs.sum())
        if total > 1 + Q_SUM_TOLERANCE:
            raise _refuse(f"drafts[{i}].q.probs", f"sum to {total:.9g}, more than 1")
        mass = probs[ids == token]
        if mass.numel() == 0 or float(mass[0]) <= 0:
            raise _refuse(f"drafts[{i}].q", f"gives the drafted token {token} no probability")


def check_siblings(draft: Draft) -> None:
    """The multi-draft rules are exact for siblings that are all one-hot with distinct tokens, or all
    drawn from q, each sent with the q it was drawn from given the siblings before it (the same q for
    i.i.d. draws; verifier_svc.rejection_sampler.verify_tree); a mix is refused."""
    for parent, kids in draft_tree.children(draft.parents).items():
        if len(kids) < 2:
            continue
        where = f"drafts {kids} (siblings under {'the last committed token' if parent < 0 else f'drafts[{parent}]'})"
        qs = [draft.q[k] for k in kids]
        if all(q is None for q in qs):
            if len({draft.token_ids[k] for k in kids}) != len(kids):
                raise _refuse(where, "one-hot siblings must be distinct tokens")
        elif any(q is None for q in qs):
            raise _refuse(where, "siblings are all one-hot, or all drawn from q (each with its own q)")
