"""logprobs, vLLM's: for each output token, its log-probability under the target's raw logits (before
temperature, top-k, top-p or a min_tokens ban, as vLLM's default "raw_logprobs"), its rank, and those
of the `logprobs` most likely tokens at that position.

They are read from the rows of the verify pass that scored the committed tokens, so each is the
target's own at its position whether the token was drafted and accepted or the target's correction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_LOGPROBS = 20
"""The most top tokens a request may ask for (vLLM's default max_logprobs)."""


@dataclass(frozen=True)
class Logprob:
    logprob: float
    rank: int
    """1 for the most likely token at the position."""
    decoded_token: str | None = None


def token_logprobs(logits: torch.Tensor, token_ids: list[int], top: int) -> list[dict[int, Logprob]]:
    """logits [len(token_ids), vocab], row i scoring token_ids[i]: for each token, a dict holding it and
    the `top` most likely tokens (the token first), each with its log-probability and rank."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    ids = torch.tensor(token_ids, device=logprobs.device)[:, None]
    chosen = logprobs.gather(1, ids)
    ranks = ((logprobs > chosen).sum(dim=-1) + 1).tolist()
    best_values, best_ids = logprobs.topk(top, dim=-1) if top else (chosen[:, :0], ids[:, :0])
    entries = []
    for token, value, rank, values, tops in zip(
        token_ids, chosen[:, 0].tolist(), ranks, best_values.tolist(), best_ids.tolist()
    ):
        entry = {token: Logprob(value, rank)}
        for place, (other, other_value) in enumerate(zip(tops, values), start=1):
            entry.setdefault(other, Logprob(other_value, place))
        entries.append(entry)
    return entries
