"""The target distribution p: a request's logit bias and min-p on its logits, then temperature, then
top-k, then top-p, as vLLM applies them.

vLLM adds logit_bias with the min_tokens ban, before the penalties, and applies min-p after
temperature, before top-k and top-p: a token is dropped when its probability is below min_p times
the most likely token's. That test needs no probabilities: p_i < min_p * p_max holds exactly when
logit_i / T < logit_max / T + ln(min_p), so min-p is a mask on the logits, applied before temperature
with the same result, and greedy decoding (argmax) is never changed by it.
"""

from __future__ import annotations

import math

import torch


def target_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """logits [n, vocab] -> probabilities [n, vocab] in float64 (temperature must be > 0)."""
    n, vocab = logits.shape
    return batched_target_probs(
        logits,
        torch.full((n,), float(temperature), dtype=torch.float64, device=logits.device),
        torch.full((n,), int(top_k), dtype=torch.int64, device=logits.device),
        torch.full((n,), float(top_p), dtype=torch.float64, device=logits.device),
        uses_top_k=0 < top_k < vocab,
        uses_top_p=top_p < 1.0,
    )


def batched_target_probs(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    *,
    uses_top_k: bool = True,
    uses_top_p: bool = True,
) -> torch.Tensor:
    """Each row with its own parameters, on the logits' device, with no host sync.

    logits [n, vocab]; temperature [n] float64 (> 0); top_k [n] int64 (<= 0 or >= vocab: off);
    top_p [n] float64 (1.0: off) -> probabilities [n, vocab] float64. uses_top_k / uses_top_p: False
    when the caller knows no row has that filter on, which skips its sort (the result is the same).
    """
    scaled = logits.to(torch.float64) / temperature[:, None]
    vocab = scaled.shape[-1]
    if uses_top_k:
        ordered = torch.sort(scaled, dim=-1, descending=True).values
        k = torch.where((top_k > 0) & (top_k < vocab), top_k, vocab)
        kth = ordered.gather(-1, (k - 1)[:, None])  # [n, 1]: the k-th largest, as topk(...).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if not uses_top_p:
        return probs
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    nucleus = top_p[:, None] < 1.0
    drop_sorted = (mass_before >= top_p[:, None]) & nucleus
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    probs = probs.masked_fill(drop, 0.0)
    return torch.where(nucleus, probs / probs.sum(dim=-1, keepdim=True), probs)


def apply_logit_bias(logits: torch.Tensor, bias: dict[int, float]) -> None:
    """logits [rows, vocab]: each biased token's logit moved by its bias, in place."""
    ids = torch.tensor(list(bias), dtype=torch.int64, device=logits.device)
    values = torch.tensor(list(bias.values()), dtype=logits.dtype, device=logits.device)
    with torch.inference_mode():  # the runner's logits are inference tensors
        logits[:, ids] += values


def apply_min_p(logits: torch.Tensor, min_p: float, temperature: float) -> None:
    """logits [rows, vocab]: tokens below min_p times the most likely one's probability at temperature
    (> 0) masked to -inf, in place. min_p 0 masks nothing; 1 keeps only the most likely tokens."""
    if min_p <= 0.0:
        return
    with torch.inference_mode():
        floor = logits.max(dim=-1, keepdim=True).values + temperature * math.log(min_p)
        logits.masked_fill_(logits < floor, float("-inf"))
