"""The in-process speculative decoding loop: propose, verify all sequences in one target pass, commit.

Every round each running sequence feeds the target its not-yet-cached committed tokens (the whole
prompt on the first round, one token afterwards) followed by its drafts, so prefill, verification and
re-prefill after preemption are the same ragged batch. The KV cache holds every committed token but
the last; rejected drafts are rolled back by truncating to that length.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

import torch

from proposer_svc.proposer import Draft, DraftRequest, Proposer
from splitspec.adaptive_k import AcceptanceEstimate, PassCostModel, choose_num_drafts
from splitspec.config import HIDDEN_STATES_NONE
from splitspec.errors import SplitspecError
from splitspec.models.runner import ModelRunner
from splitspec.sampling_params import SamplingParams
from splitspec.sequence import Sequence
from splitspec.stop_checker import StopChecker
from verifier_svc.verifier import Verifier


@dataclass(frozen=True)
class SchedulerLimits:
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 4096


class Engine:
    def __init__(
        self,
        runner: ModelRunner,
        proposer: Proposer | None,
        num_speculative_tokens: int,
        stop_checker: StopChecker,
        limits: SchedulerLimits = SchedulerLimits(),
        seed: int = 0,
        cost_model: PassCostModel | None = None,
    ) -> None:
        """cost_model: when given, the number of drafts adapts per sequence (see adaptive_k.py)."""
        self.runner = runner
        self.verifier = Verifier(runner, proposer.hidden_states if proposer else HIDDEN_STATES_NONE)
        self.proposer = proposer
        self.num_speculative_tokens = num_speculative_tokens if proposer else 0
        self.stop_checker = stop_checker
        self.limits = limits
        self._rng = random.Random(seed)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.cost_model = cost_model
        self._acceptance: dict[str, AcceptanceEstimate] = {}
        self._hidden: dict[str, torch.Tensor] = {}  # the target's states not yet handed to the proposer

    def add_request(self, seq_id: str, prompt: str | None, prompt_token_ids: list[int], params: SamplingParams) -> Sequence:
        if not prompt_token_ids:
            raise SplitspecError(f"request {seq_id}: the prompt is empty")
        if len(prompt_token_ids) >= self.runner.max_model_len:
            raise SplitspecError(
                f"request {seq_id}: prompt has {len(prompt_token_ids)} tokens, the model's context is "
                f"{self.runner.max_model_len}; shorten the prompt"
            )
        vocab = self.runner.vocab_size
        if any(not 0 <= t < vocab for t in prompt_token_ids):
            raise SplitspecError(f"request {seq_id}: prompt token ids must be in [0, {vocab})")
        seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        seq = Sequence(seq_id, prompt, list(prompt_token_ids), params, seed)
        self.waiting.append(seq)
        return seq

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def step(self) -> list[Sequence]:
        """Run one round for every running sequence; return the sequences that finished in it."""
        self._admit()
        steps = list(zip(self.running, self._propose()))
        while not self.verifier.fits(steps):
            if len(self.running) == 1:
                raise SplitspecError(
                    f"request {self.running[0].seq_id} needs more KV cache than exists; raise kv_cache_memory_bytes"
                )
            self._preempt(self.running[-1])
            steps = steps[: len(self.running)]
        finished = []
        for (seq, draft), result in zip(steps, self.verifier.verify(steps)):
            seq.stats.record_round(len(draft.token_ids), result.num_accepted)
            if self.cost_model is not None:
                self._acceptance.setdefault(seq.seq_id, AcceptanceEstimate()).update(len(draft.token_ids), result.num_accepted)
            self.stop_checker.commit(seq, result.token_ids)
            if result.hidden_state is not None:
                self._hidden[seq.seq_id] = result.hidden_state
            if seq.finished:
                finished.append(seq)
            else:
                self.verifier.rollback(seq)
        for seq in finished:
            self.running.remove(seq)
            self._release(seq)
        return finished

    def abort(self, seq_id: str) -> None:
        for seq in list(self.running):
            if seq.seq_id == seq_id:
                self.running.remove(seq)
                self._release(seq)
        self.waiting = deque(s for s in self.waiting if s.seq_id != seq_id)

    def _admit(self) -> None:
        budget = self.limits.max_num_batched_tokens - sum(1 + self.num_speculative_tokens for _ in self.running)
        while self.waiting and len(self.running) < self.limits.max_num_seqs:
            cost = len(self.waiting[0].tokens) - self.runner.cached_length(self.waiting[0].seq_id)
            if self.running and cost > budget:
                break
            budget -= cost
            self.running.append(self.waiting.popleft())

    def _num_drafts(self, seq: Sequence) -> int:
        k = min(self.num_speculative_tokens, self.runner.max_model_len - len(seq.tokens))
        if seq.params.max_tokens is not None:
            k = min(k, seq.params.max_tokens - seq.num_output_tokens - 1)
        return max(0, k)

    def _draft_budget(self) -> list[int]:
        """Drafts per running sequence: adaptive where that cannot change a seeded sample.

        A sampled request drafting from a non-one-hot q keeps a fixed K: which positions get drafted
        changes its individual samples (never their distribution), and a seed must reproduce them.
        """
        limits = [self._num_drafts(seq) for seq in self.running]
        if self.cost_model is None:
            return limits
        fixed = [self.proposer.samples_drafts and not seq.params.greedy for seq in self.running]
        adaptive = [i for i, f in enumerate(fixed) if not f]
        base_rows = sum(len(seq.tokens) - self.runner.cached_length(seq.seq_id) for seq in self.running)
        base_rows += sum(limit for limit, f in zip(limits, fixed) if f)
        rates = [self._acceptance.get(self.running[i].seq_id, AcceptanceEstimate()).rate for i in adaptive]
        chosen = choose_num_drafts(rates, [limits[i] for i in adaptive], base_rows, self.cost_model)
        for i, k in zip(adaptive, chosen):
            limits[i] = k
        return limits

    def _propose(self) -> list[Draft]:
        if self.proposer is None:
            return [Draft() for _ in self.running]
        requests = [
            DraftRequest(
                seq_id=seq.seq_id,
                token_ids=seq.tokens,
                num_tokens=budget,
                temperature=seq.params.temperature,
                top_k=seq.params.top_k,
                seed=seq.seed,
                hidden_state=self._hidden.pop(seq.seq_id, None),
            )
            for seq, budget in zip(self.running, self._draft_budget())
        ]
        drafts = self.proposer.propose(requests)
        return [Draft(d.token_ids[: r.num_tokens], d.q[: r.num_tokens]) for d, r in zip(drafts, requests)]

    def _preempt(self, seq: Sequence) -> None:
        """Drop a sequence's KV blocks; it re-prefills from its committed tokens when readmitted."""
        self.running.remove(seq)
        self._release(seq)
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _release(self, seq: Sequence) -> None:
        self.runner.free(seq.seq_id)
        self._acceptance.pop(seq.seq_id, None)
        self._hidden.pop(seq.seq_id, None)
        if self.proposer is not None:
            self.proposer.release(seq.seq_id)
