"""One client of a proposer, for the gateway and for the verifier (which asks proposers itself for direct
drafts): what the proposer holds of each sequence (the committed tokens sent, the hidden states it has
yet to receive), the draft call that sends the whole context again when the proposer has lost it, the
draft made ahead, the release, and the backoff after a failure."""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc

from splitspec.drafts import HiddenStates
from splitspec.errors import ServiceError
from splitspec.rpc import wire
from splitspec.rpc.multiplexed_stream import MultiplexedStream
from splitspec.sampling_params import SamplingParams
from splitspec_protos import splitspec_v1_pb2 as pb

RETRY_AFTER_S = 1.0
"""How long a proposer that failed a draft is passed over: its sequences draft elsewhere, or not at all."""
RELEASE_TIMEOUT_S = 5.0


def raise_if_error(response) -> None:
    """A stream's answer that is an Error, as the ServiceError it carries."""
    if response.WhichOneof("kind") == "error":
        status = next((s for s in grpc.StatusCode if s.value[0] == response.error.code), grpc.StatusCode.UNKNOWN)
        raise ServiceError(status, response.error.message)


@dataclass
class ProposerFeed:
    """What one proposer holds of one sequence, and the target's hidden states it has yet to receive."""

    mode: HiddenStates = HiddenStates.NONE
    """What its drafter reads: "last" keeps the newest state, "all" every row, none skipped."""
    sent: int = 0
    """The committed tokens it holds."""
    hidden: pb.HiddenStates | None = None

    def receive(self, hidden: pb.HiddenStates) -> None:
        if self.mode == HiddenStates.ALL and self.hidden is not None:
            self.hidden = wire.concat_rows(self.hidden, hidden)
        else:
            self.hidden = hidden


@dataclass(frozen=True)
class DraftCall:
    """What a draft asks for besides the tokens: how many, for which sampling, and how long to wait."""

    num_tokens: int
    params: SamplingParams
    seed: int
    num_prompt_tokens: int
    timeout_s: float
    trace: pb.TraceContext | None = None
    time_limit_s: float = 0.0
    """The client's time left (0: none): the proposer forgets the sequence once it has passed."""
    tree_width: int = 1
    """DraftStep.tree_width: more than 1 lets the drafter answer a tree."""


class ProposerClient:
    def __init__(self, stream: MultiplexedStream) -> None:
        self.stream = stream
        self.down_until = 0.0

    @property
    def up(self) -> bool:
        """Not passed over after a failure."""
        return time.monotonic() >= self.down_until

    def mark_down(self) -> None:
        self.down_until = time.monotonic() + RETRY_AFTER_S

    async def draft(self, seq_id: str, tokens: list[int], feed: ProposerFeed, call: DraftCall) -> pb.DraftResult:
        """The draft after the committed `tokens`, sending the ones the proposer lacks and the hidden
        states it has yet to receive; all of them again if it lost the sequence. Raises ConnectionError,
        asyncio.TimeoutError or ServiceError when it fails (mark_down is the caller's to decide)."""
        result = await self.send(seq_id, tokens, feed, call, feed.hidden)
        if result.needs_full_context:
            feed.sent = 0
            result = await self.send(seq_id, tokens, feed, call, feed.hidden)
        feed.sent = len(tokens)
        if feed.mode == HiddenStates.ALL:
            feed.hidden = None  # every row delivered; the next draft carries only newer ones
        return result

    async def send(
        self,
        seq_id: str,
        tokens: list[int],
        feed: ProposerFeed,
        call: DraftCall,
        hidden: pb.HiddenStates | None = None,
        assumed: list[int] | None = None,
        excluded_first: list[int] | None = None,
    ) -> pb.DraftResult:
        """One DraftStep, as is: the committed tokens from feed.sent. With `assumed`, a draft made ahead
        (after these tokens, which the proposer does not hold, and starting with none of excluded_first);
        what the proposer then holds is the caller's to note."""
        step = wire.draft_step(
            tokens, feed.sent, call.num_tokens, call.params, call.seed, call.num_prompt_tokens, hidden, assumed,
            call.time_limit_s, excluded_first, call.tree_width,
        )  # fmt: skip
        request = pb.ProposerRequest(seq_id=seq_id, trace_context=call.trace, draft=step)
        response = await self.stream.call(request, timeout=call.timeout_s)
        raise_if_error(response)
        return response.draft

    async def release(self, seq_id: str, sent: int = 0, tokens: list[int] | None = None) -> None:
        """The sequence ended with these committed `tokens`, of which the proposer holds the first `sent`:
        it is told the rest (drafters that remember outputs keep them), or nothing if it holds none."""
        request = pb.ProposerRequest(seq_id=seq_id)
        request.release.start = sent
        request.release.token_ids.extend(tokens[sent:] if sent and tokens else ())
        await self.stream.call(request, timeout=RELEASE_TIMEOUT_S)

    async def close(self) -> None:
        await self.stream.close()
