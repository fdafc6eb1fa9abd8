"""What output text must be, by the slow obvious method, and the outputs the text tests feed in."""

from __future__ import annotations

import itertools
import random
from typing import Callable

MULTI_BYTE_TEXT = "Hello wörld ✓ 日本語のテキスト, emoji 🎉🙂 and 한국어 — naïve café.\n"
"""A byte-level tokenizer spells its Japanese, Korean and emoji with several tokens per character."""


def stop_by_full_decoding(
    decode: Callable[[list[int]], str], output: list[int], stops: list[str], include: bool
) -> tuple[int, str | None, str]:
    """Where stop strings end generation when the whole output is decoded after every token, the first
    in `stops` order winning: the quadratic original, kept as the specification.
    Returns (tokens kept, the stop string or None, the text)."""
    for n in range(1, len(output) + 1):
        text = decode(output[:n])
        for stop in stops:
            at = text.find(stop)
            if at >= 0:
                return n, stop, text[: at + len(stop)] if include else text[:at]
    return len(output), None, decode(output)


def in_rounds(token_ids: list[int], round_sizes: list[int]) -> list[list[int]]:
    """The tokens cut into consecutive rounds of the given sizes, repeated until they run out."""
    rounds, at = [], 0
    for size in itertools.cycle(round_sizes):
        if at >= len(token_ids):
            return rounds
        rounds.append(token_ids[at : at + size])
        at += size


def long_output(tokenizer, num_tokens: int) -> list[int]:
    """`num_tokens` tokens of numbered multi-byte lines."""
    ids = tokenizer.encode("".join(f"{i}. {MULTI_BYTE_TEXT}" for i in range(num_tokens // 10)))
    assert len(ids) >= num_tokens
    return ids[:num_tokens]


def token_pool(tokenizer) -> list[int]:
    """Tokens of multi-byte text, special tokens, and arbitrary vocabulary (lone UTF-8 bytes among them)."""
    rng = random.Random(0)
    return tokenizer.encode(MULTI_BYTE_TEXT) + list(tokenizer.all_special_ids) + rng.sample(range(len(tokenizer)), 64)


class CountingTokenizer:
    """A tokenizer that counts the tokens handed to `decode`: the work text costs."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.num_decoded = 0

    def decode(self, token_ids: list[int], **kwargs) -> str:
        self.num_decoded += len(token_ids)
        return self.tokenizer.decode(token_ids, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.tokenizer, name)


def decode_cost_per_token(round_costs: list[tuple[int, int]]) -> list[float]:
    """Each round's decoded tokens spread evenly over the tokens it committed: (committed, decoded) -> per token."""
    return [decoded / committed for committed, decoded in round_costs for _ in range(committed)]
