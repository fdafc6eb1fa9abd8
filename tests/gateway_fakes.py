"""A scripted greedy target and drafter for driving GatewayCore without models: the target's next token
is a fixed function of the context, the drafter's continuation is the target's but wrong at every
seventh position, and ScriptedProposer serves those drafts the way a proposer client does."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from splitspec.adaptive_k import Ewma
from splitspec.drafts import Draft
from splitspec.rpc import wire
from splitspec_protos import splitspec_v1_pb2 as pb

VOCAB = 97
K = 4


def target_next(context: list[int]) -> int:
    return (sum(context) * 31 + 7 * len(context)) % VOCAB


def target_output(prompt: list[int], max_tokens: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(max_tokens):
        tokens.append(target_next(tokens))
    return tokens[len(prompt) :]


def verify_greedily(context: list[int], drafts: list[int]) -> tuple[int, list[int]]:
    """The drafts accepted, and the tokens committed: those drafts, then the target's next token."""
    committed = []
    for token in drafts:
        if token != target_next(context + committed):
            break
        committed.append(token)
    return len(committed), committed + [target_next(context + committed)]


def drafter_continuation(context: list[int], n: int) -> list[int]:
    """The target's tokens, except that every position divisible by 7 gets a wrong one."""
    tokens = list(context)
    for _ in range(n):
        right = target_next(tokens)
        tokens.append((right + 1) % VOCAB if len(tokens) % 7 == 0 else right)
    return tokens[len(context) :]


@dataclass
class ScriptedProposer:
    """Drafts drafter_continuation over what it was sent plus any assumed tokens; `fail_ahead_from`:
    the draft ahead with that index and every later one fails as a dead proposer's would."""

    address: str = "proposer"
    server_name: str | None = None
    link: Ewma = field(default_factory=Ewma)
    draft_token: Ewma = field(default_factory=Ewma)
    available: bool = True
    num_sequences: int = 0
    fail_ahead_from: int | None = None
    fresh_calls: int = 0
    ahead_calls: int = 0

    @property
    def takes_new(self) -> bool:
        return self.available

    def mark_down(self) -> None:
        self.available = False

    async def draft(self, seq, feed, num_tokens, timeout, trace=None, deadline=None, tree_width=1) -> pb.DraftResult:
        return await self._draft(seq, num_tokens, None)

    async def draft_after(self, seq, feed, num_tokens, timeout, assumed, trace=None, deadline=None) -> pb.DraftResult:
        return await self._draft(seq, num_tokens, assumed)

    async def _draft(self, seq, num_tokens: int, assumed: list[int] | None) -> pb.DraftResult:
        if assumed is None:
            self.fresh_calls += 1
        else:
            self.ahead_calls += 1
            if self.fail_ahead_from is not None and self.ahead_calls > self.fail_ahead_from:
                raise ConnectionError("proposer: stream closed")
        await asyncio.sleep(0)
        context = list(seq.tokens) + list(assumed or [])
        draft = Draft(drafter_continuation(context, num_tokens), [None] * num_tokens)
        return pb.DraftResult(committed_len=len(seq.tokens), drafts=wire.draft_to_proto(draft))

    async def release(self, seq_id: str, sent: int = 0, tokens=None) -> None:
        pass
