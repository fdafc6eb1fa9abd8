"""Counter-based random streams: one independent stream per (request seed, position, purpose).

Drawing a token's randomness from its own stream, instead of from a generator shared by the batch,
makes seeded output independent of which other requests happen to be batched alongside it and of how
many tokens each round speculates.
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1

TARGET = 1
"""The target model's own sample at a position (also used for the bonus token)."""
ACCEPT = 2
"""The uniform draw of the min(1, p/q) acceptance test."""
RESIDUAL = 3
"""The sample from the residual distribution after a rejection."""
DRAFT = 4
"""A draft model's sample from its q."""


def sibling(purpose: int, index: int) -> int:
    """The stream of a tree draft's sibling `index` at a position: the first sibling's is the chain's
    (so a tree of one branch draws what a chain draws), each other one its own."""
    return purpose if index == 0 else purpose + (index << 8)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def stream_seed(seed: int, position: int, purpose: int) -> int:
    h = _splitmix64(seed & _MASK64)
    h = _splitmix64(h ^ (position & _MASK64))
    h = _splitmix64(h ^ purpose)
    return h & ((1 << 63) - 1)


def generator(seed: int, position: int, purpose: int) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, position, purpose))


def exponentials(seed: int, position: int, purpose: int, n: int) -> torch.Tensor:
    """n i.i.d. Exp(1) draws; argmax(p / E) is an exact sample from p (the exponential race)."""
    return torch.empty(n, dtype=torch.float64).exponential_(generator=generator(seed, position, purpose))


def uniform(seed: int, position: int, purpose: int) -> float:
    return torch.rand(1, dtype=torch.float64, generator=generator(seed, position, purpose)).item()
