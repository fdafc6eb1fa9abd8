"""Which sequences run this round: the waiting and running queues, admission and preemption.

A sequence waits until its uncached tokens fit the round's token budget (running sequences first
reserve one token plus K drafts each) and a running slot is free. When the KV cache cannot hold a
round, the most recently admitted sequence is preempted: it goes back to the front of the queue and
re-prefills from its committed tokens when it is admitted again.
"""

from __future__ import annotations

from collections import deque

from splitspec.config import SchedulerConfig
from splitspec.models.runner import ModelRunner
from splitspec.sequence import Sequence


class Scheduler:
    def __init__(self, config: SchedulerConfig, runner: ModelRunner, num_speculative_tokens: int) -> None:
        self.config = config
        self.runner = runner
        self.num_speculative_tokens = num_speculative_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[Sequence]:
        """Admit what fits, then return the sequences that run this round, oldest first."""
        budget = self.config.max_num_batched_tokens - len(self.running) * (1 + self.num_speculative_tokens)
        while self.waiting and len(self.running) < self.config.max_num_seqs:
            cost = len(self.waiting[0].tokens) - self.runner.cached_length(self.waiting[0].seq_id)
            if self.running and cost > budget:
                break
            budget -= cost
            self.running.append(self.waiting.popleft())
        return list(self.running)

    def preempt_newest(self) -> Sequence:
        """Move the most recently admitted running sequence back to the front of the queue; the
        caller frees its KV blocks."""
        seq = self.running.pop()
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
        return seq

    def finish(self, seq: Sequence) -> None:
        self.running.remove(seq)

    def abort(self, seq_id: str) -> list[Sequence]:
        """Drop the sequence wherever it is; returns the running ones removed (their blocks need freeing)."""
        removed = [s for s in self.running if s.seq_id == seq_id]
        self.running = [s for s in self.running if s.seq_id != seq_id]
        self.waiting = deque(s for s in self.waiting if s.seq_id != seq_id)
        return removed
