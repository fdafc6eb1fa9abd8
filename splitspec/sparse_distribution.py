"""The exact distribution q a draft token was drawn from, sent sparse: only the tokens with mass."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SparseDistribution:
    token_ids: torch.Tensor  # [m] int64
    probs: torch.Tensor  # [m] float64, sums to 1

    def dense(self, vocab_size: int) -> torch.Tensor:  # [vocab_size] float64
        q = torch.zeros(vocab_size, dtype=torch.float64)
        q[self.token_ids] = self.probs.to(torch.float64)
        return q
