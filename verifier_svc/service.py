"""The verifier's core, without gRPC: sequences from many streams, verified in shared batches.

Steps that arrive within a short window go through the target in one forward pass. When the KV cache
is short, idle sequences lose their cached blocks first (they re-prefill from the token history the
verifier keeps); a step that still does not fit waits for the next batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import torch

from splitspec.adaptive_k import PassCostModel
from splitspec.drafts import Draft, HiddenStates
from splitspec.errors import RunnerLost, ServiceError, SplitspecError
from splitspec.models.runner import ModelRunner
from splitspec.rpc.micro_batcher import RETRY, MicroBatcher
from splitspec.sampling_params import SamplingParams
from splitspec.sequence import check_prompt
from verifier_svc.verifier import Verifier


@dataclass
class RemoteSequence:
    seq_id: str
    tokens: list[int]
    params: SamplingParams
    seed: int
    hidden_states: HiddenStates = HiddenStates.NONE  # what results carry for the sequence's drafter


@dataclass
class _StepCall:
    seq: RemoteSequence
    committed_len: int
    draft: Draft


@dataclass
class StepOutcome:
    committed_len: int
    num_accepted: int
    token_ids: list[int]
    hidden_state: torch.Tensor | None = None  # when the sequence asked for it


class VerifierService:
    def __init__(self, runner: ModelRunner, *, max_num_seqs: int = 64, batch_window_s: float = 0.002) -> None:
        self.runner = runner
        self.verifier = Verifier(runner)
        self.max_num_seqs = max_num_seqs
        self.sequences: dict[str, RemoteSequence] = {}
        self.num_evictions = 0
        self.cost_model: PassCostModel | None = None  # measured pass costs, published for the gateway
        self.batcher: MicroBatcher[_StepCall, StepOutcome] = MicroBatcher(
            self._run_batch, batch_window_s, expected=lambda: len(self.sequences)
        )

    def start(self) -> None:
        self.batcher.start()

    async def close(self) -> None:
        await self.batcher.close()

    def add(
        self,
        seq_id: str,
        token_ids: list[int],
        params: SamplingParams,
        seed: int,
        hidden_states: HiddenStates = HiddenStates.NONE,
    ) -> None:
        if not self.runner.healthy():
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, "this verifier's model has failed; use another verifier")
        if seq_id in self.sequences:
            raise ServiceError(grpc.StatusCode.ALREADY_EXISTS, f"sequence {seq_id} is already running on this verifier")
        try:
            check_prompt(token_ids, self.runner.vocab_size, self.runner.max_model_len)
        except SplitspecError as exc:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if len(self.sequences) >= self.max_num_seqs:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"verifier is full ({self.max_num_seqs} sequences); retry later"
            )
        self.sequences[seq_id] = RemoteSequence(seq_id, list(token_ids), params, seed, hidden_states)

    async def step(self, seq_id: str, committed_len: int, draft: Draft) -> StepOutcome:
        seq = self.sequences.get(seq_id)
        if seq is None:
            raise ServiceError(grpc.StatusCode.NOT_FOUND, f"sequence {seq_id} is not running on this verifier")
        return await self.batcher.submit(_StepCall(seq, committed_len, draft))

    async def release(self, seq_id: str) -> None:
        if self.sequences.pop(seq_id, None) is not None:
            await self.batcher.run_exclusive(self.verifier.free, seq_id)

    @property
    def num_free_blocks(self) -> int:
        return getattr(self.runner, "num_free_blocks", 0)

    # -- worker thread -----------------------------------------------------------------------------

    def _run_batch(self, calls: list[_StepCall]) -> list[StepOutcome | BaseException | object]:
        outcomes: list[StepOutcome | BaseException | object] = [None] * len(calls)
        ready: list[int] = []
        for i, call in enumerate(calls):
            problem = self._check(call)
            if problem is not None:
                outcomes[i] = problem
            else:
                ready.append(i)
        steps = [(calls[i].seq, calls[i].draft) for i in ready]
        self._evict_idle_until_fits(steps, {calls[i].seq.seq_id for i in ready})
        while steps and not self.verifier.fits(steps):
            if len(steps) == 1:
                outcomes[ready[0]] = ServiceError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, "the sequence no longer fits in the verifier's KV cache"
                )
                steps, ready = [], []
                break
            outcomes[ready.pop()] = RETRY
            steps.pop()
        if steps:
            try:
                results = self.verifier.verify(steps, [calls[i].seq.hidden_states for i in ready])
            except RunnerLost as exc:  # every call of the batch fails with it: another verifier can go on
                raise ServiceError(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
            for i, result in zip(ready, results):
                seq = calls[i].seq
                base = len(seq.tokens)
                seq.tokens.extend(result.token_ids)
                self.verifier.rollback(seq)
                outcomes[i] = StepOutcome(base, result.num_accepted, result.token_ids, result.hidden_state)
        return outcomes

    def _check(self, call: _StepCall) -> ServiceError | None:
        seq = call.seq
        if self.sequences.get(seq.seq_id) is not seq:
            return ServiceError(grpc.StatusCode.NOT_FOUND, f"sequence {seq.seq_id} was released")
        if call.committed_len != len(seq.tokens):
            return ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"stale step for {seq.seq_id}: built on {call.committed_len} tokens, verifier has {len(seq.tokens)}",
            )
        k = len(call.draft.token_ids)
        if len(seq.tokens) + k > self.runner.max_model_len:
            return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"{k} drafts would run past the model's context")
        if any(not 0 <= t < self.runner.vocab_size for t in call.draft.token_ids):
            return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "draft token ids out of the vocabulary")
        return None

    def _evict_idle_until_fits(self, steps, busy: set[str]) -> None:
        """Drop the cached blocks of sequences that are not stepping now, largest first."""
        if self.verifier.fits(steps):
            return
        idle = [
            s for s in list(self.sequences.values()) if s.seq_id not in busy and self.runner.cached_length(s.seq_id)
        ]
        for seq in sorted(idle, key=lambda s: self.runner.cached_length(s.seq_id), reverse=True):
            self.verifier.free(seq.seq_id)
            self.num_evictions += 1
            if self.verifier.fits(steps):
                return
