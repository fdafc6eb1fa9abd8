"""The proposer's core, without gRPC: per-sequence context, updated incrementally, drafted in batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from proposer_svc.proposer import Proposer
from splitspec.drafts import Draft, DraftRequest
from splitspec.rpc.micro_batcher import MicroBatcher


@dataclass
class DraftOutcome:
    draft: Draft
    needs_full_context: bool = False


class ProposerService:
    def __init__(
        self, proposer: Proposer, *, method: str, num_speculative_tokens: int, batch_window_s: float = 0.001
    ) -> None:
        self.proposer = proposer
        self.method = method
        self.num_speculative_tokens = num_speculative_tokens
        self.contexts: dict[str, list[int]] = {}
        self.batcher: MicroBatcher[DraftRequest, Draft] = MicroBatcher(
            self.proposer.propose, batch_window_s, expected=lambda: len(self.contexts)
        )

    def start(self) -> None:
        self.batcher.start()

    async def close(self) -> None:
        await self.batcher.close()

    async def draft(
        self,
        seq_id: str,
        *,
        committed_len: int,
        start: int,
        token_ids: list[int],
        num_tokens: int,
        temperature: float,
        top_k: int,
        seed: int,
        hidden_state: torch.Tensor | None = None,
    ) -> DraftOutcome:
        """Append committed tokens [start, committed_len) and draft; ask for everything if out of step."""
        context = self.contexts.get(seq_id, [])
        if start != len(context) or start + len(token_ids) != committed_len:
            if start != 0:
                self.contexts.pop(seq_id, None)
                return DraftOutcome(Draft(), needs_full_context=True)
            context = []
        context = context + token_ids
        self.contexts[seq_id] = context
        if num_tokens <= 0:
            return DraftOutcome(Draft())
        request = DraftRequest(seq_id, context, num_tokens, temperature, top_k, seed, hidden_state)
        return DraftOutcome(await self.batcher.submit(request))

    async def release(self, seq_id: str) -> None:
        if self.contexts.pop(seq_id, None) is not None:
            await self.batcher.run_exclusive(self.proposer.release, seq_id)
