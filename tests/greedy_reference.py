"""Greedy references from transformers and the near-tie rule for comparing against them."""

from __future__ import annotations

import torch

NEAR_TIE = 1e-4


def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    from transformers import GenerationConfig

    # no EOS: the engine runs with ignore_eos, and min_new_tokens would instead mask EOS out of the argmax
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    model.generation_config.eos_token_id = None
    out = model.generate(
        torch.tensor([prompt_ids]),
        attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        generation_config=config,
    )
    return out[0, len(prompt_ids) :].tolist()


def assert_same_or_near_tie(
    model, prompt_ids: list[int], got: list[int], expected: list[int], near_tie: float = NEAR_TIE
) -> None:
    """Equal token for token, unless the first difference is where the target's top-2 logits (from
    `model`, in float32) lie within `near_tie` of each other.

    Differently shaped passes (one token vs K+1 tokens, batch 1 vs 4) round differently; that may flip
    an exact near-tie and nothing else. Past such a point the outputs legitimately diverge.
    """
    assert len(got) == len(expected), f"lengths differ: {len(got)} vs {len(expected)}"
    diff = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), None)
    if diff is None:
        return
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + expected[:diff]])).logits[0, -1]
    top2 = torch.topk(logits, 2)
    gap = (top2.values[0] - top2.values[1]).item()
    assert gap < near_tie and {got[diff], expected[diff]} <= set(top2.indices.tolist()), (
        f"outputs differ at token {diff}: got {got[diff]}, expected {expected[diff]}; "
        f"the target's top-2 logit gap there is {gap:.3g}, not a near-tie"
    )
