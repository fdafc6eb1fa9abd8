"""The in-process speculative decoding loop: schedule, propose and verify in one target pass, commit.

Every round each running sequence feeds the target its not-yet-cached committed tokens (the whole
prompt on the first round, one token afterwards) followed by its drafts, so prefill, verification and
re-prefill after preemption are the same ragged batch. The KV cache holds every committed token but
the last; rejected drafts are rolled back by truncating to that length.
"""

from __future__ import annotations

import random
import time

import torch

from proposer_svc.proposer import Proposer
from splitspec.adaptive_k import Ewma, PassCostModel, PositionalAcceptance, RoundTrip, choose_drafts
from splitspec.config import SchedulerConfig
from splitspec.draft_limits import keeps_fixed_k, max_drafts
from splitspec.drafts import Draft, DraftRequest, HiddenStates
from splitspec.engine.scheduler import Scheduler
from splitspec.errors import SplitspecError
from splitspec.output_grammar import GrammarCompiler
from splitspec.sampling_params import SamplingParams
from splitspec.sequence import Sequence, check_prompt, request_seed
from splitspec.stop_checker import StopChecker
from splitspec.token_ban import TokenBan
from splitspec.token_penalties import TokenPenalties
from verifier_svc.rejection_sampler import VerifyResult
from verifier_svc.verifier import Verifier

Step = tuple[Sequence, Draft]


class Engine:
    def __init__(
        self,
        verifier: Verifier,
        proposer: Proposer | None,
        num_speculative_tokens: int,
        stop_checker: StopChecker,
        config: SchedulerConfig = SchedulerConfig(),
        seed: int = 0,
        cost_model: PassCostModel | None = None,
        grammars: GrammarCompiler | None = None,
        tree_width: int = 1,
    ) -> None:
        """cost_model: when given, the number of drafts adapts per sequence (see adaptive_k.py).
        grammars: compiles requests' structured outputs; without it they are refused.
        tree_width: the most branches per drafted token (DraftRequest.tree_width)."""
        self.verifier = verifier
        self.runner = verifier.runner
        self.proposer = proposer
        self.num_speculative_tokens = num_speculative_tokens if proposer else 0
        self.stop_checker = stop_checker
        self.scheduler = Scheduler(config, self.runner, self.num_speculative_tokens)
        self.cost_model = cost_model
        self.grammars = grammars
        self.tree_width = tree_width
        self._rng = random.Random(seed)
        self._acceptance: dict[str, PositionalAcceptance] = {}
        self._draft_token_s = Ewma(warm_up=2)  # the proposer's seconds per round, per draft of the longest draft
        self._unread: dict[str, torch.Tensor] = {}  # the target's states the proposer has not been fed

    @property
    def num_preemptions(self) -> int:
        return self.scheduler.num_preemptions

    def add_request(
        self, seq_id: str, prompt: str | None, prompt_token_ids: list[int], params: SamplingParams
    ) -> Sequence:
        prompt_token_ids = params.truncated(prompt_token_ids)
        try:
            check_prompt(prompt_token_ids, self.runner.vocab_size, self.runner.max_model_len)
            params.check_vocabulary(self.runner.vocab_size)
        except SplitspecError as exc:
            raise SplitspecError(f"request {seq_id}: {exc}") from None
        seq = Sequence(seq_id, prompt, list(prompt_token_ids), params, request_seed(params, self._rng))
        seq.token_ban = TokenBan.for_request(params, len(prompt_token_ids), self.stop_checker.eos_token_ids)
        seq.penalties = TokenPenalties.for_request(params, len(prompt_token_ids))
        if params.structured_outputs is not None:
            if self.grammars is None:
                raise SplitspecError(f"request {seq_id}: this engine has no grammar compiler for structured outputs")
            seq.grammar = self.grammars.state(params.structured_outputs, [])
        self.scheduler.add(seq)
        return seq

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[Sequence]:
        """Run one round for every running sequence; return the sequences that finished in it."""
        running = self.scheduler.schedule()
        steps = self._fit(list(zip(running, self._propose(running))))
        rows = sum(len(seq.tokens) - self.runner.cached_length(seq.seq_id) + len(d.token_ids) for seq, d in steps)
        started = time.perf_counter()
        results = self.verifier.verify(steps)
        if self.cost_model is not None:
            self.cost_model.observe(rows, time.perf_counter() - started)
        return self._commit(steps, results)

    def abort(self, seq_id: str) -> None:
        for seq in self.scheduler.abort(seq_id):
            self._release(seq)

    def _fit(self, steps: list[Step]) -> list[Step]:
        """Preempt the newest sequences until the round fits the KV cache."""
        while not self.verifier.fits(steps):
            if len(steps) == 1:
                raise SplitspecError(
                    f"request {steps[0][0].seq_id} needs more KV cache than exists; raise kv_cache_memory_bytes"
                )
            self._release(self.scheduler.preempt_newest())
            steps = steps[:-1]
        return steps

    def _commit(self, steps: list[Step], results: list[VerifyResult]) -> list[Sequence]:
        finished = []
        for (seq, draft), result in zip(steps, results):
            seq.stats.record_round(len(draft.token_ids), result.num_accepted)
            if self.cost_model is not None:
                self._acceptance.setdefault(seq.seq_id, PositionalAcceptance()).update(
                    len(draft.token_ids), result.num_accepted, result.path
                )
            committed = self.stop_checker.commit(seq, result.token_ids)
            if seq.logprobs is not None and result.logprobs is not None:
                seq.logprobs.extend(result.logprobs[:committed])
            if result.prompt_logprobs is not None:
                seq.prompt_logprobs = result.prompt_logprobs
            self._hold_states(seq.seq_id, result.hidden_state)
            if seq.finished:
                finished.append(seq)
            else:
                self.verifier.rollback(seq)
        for seq in finished:
            self.scheduler.finish(seq)
            self._release(seq)
        return finished

    def _draft_budget(self, running: list[Sequence]) -> list[int]:
        """Drafts per running sequence: adaptive where that cannot change a seeded sample, chosen for
        the whole pass (adaptive_k.choose_drafts) from each sequence's acceptance by position, the pass
        costs, and the time the proposer, sharing this process, takes to draft."""
        limits = [max_drafts(seq, self.num_speculative_tokens, self.runner.max_model_len) for seq in running]
        if self.cost_model is None:
            return limits
        fixed = [keeps_fixed_k(self.proposer.samples_drafts, seq.params) for seq in running]
        adaptive = [i for i, f in enumerate(fixed) if not f]
        base_rows = sum(len(seq.tokens) - self.runner.cached_length(seq.seq_id) for seq in running)
        base_rows += sum(limit for limit, f in zip(limits, fixed) if f)
        chains = [
            self._acceptance.get(running[i].seq_id, PositionalAcceptance()).gains(limits[i], self.tree_width > 1)
            for i in adaptive
        ]
        drafting = RoundTrip(draft_token_s=self._draft_token_s.value or 0.0)
        chosen = choose_drafts(chains, base_rows, self.cost_model, round_trip=drafting)
        for i, k in zip(adaptive, chosen):
            limits[i] = k
        return limits

    def _propose(self, running: list[Sequence]) -> list[Draft]:
        if self.proposer is None:
            return [Draft() for _ in running]
        requests = [
            DraftRequest(
                seq_id=seq.seq_id,
                token_ids=seq.tokens,
                num_tokens=budget,
                num_prompt_tokens=len(seq.prompt_token_ids),
                temperature=seq.params.temperature,
                top_k=seq.params.top_k,
                seed=seq.seed,
                hidden_state=self._unread.pop(seq.seq_id, None) if budget else None,
                tree_width=self.tree_width,
            )
            for seq, budget in zip(running, self._draft_budget(running))
        ]
        started = time.perf_counter()
        drafts = self.proposer.propose(requests)
        longest = max((r.num_tokens for r in requests), default=0)
        if longest:
            self._draft_token_s.add((time.perf_counter() - started) / longest)
        return [d.first(r.num_tokens) for d, r in zip(drafts, requests)]

    def _hold_states(self, seq_id: str, states: torch.Tensor | None) -> None:
        """Keep a pass's states for the proposer until a round drafts for the sequence: a round
        that drafts nothing then costs the head nothing, and the next one feeds every row it missed
        in one batch (all of them for a drafter that attends over every state, the newest for one
        that reads only the last)."""
        if states is None:
            return
        held = self._unread.get(seq_id)
        if held is not None and self.proposer.hidden_states == HiddenStates.ALL:
            states = torch.cat([held, states])
        self._unread[seq_id] = states

    def _release(self, seq: Sequence) -> None:
        self.runner.free(seq.seq_id)
        self._acceptance.pop(seq.seq_id, None)
        self._unread.pop(seq.seq_id, None)
        if self.proposer is not None:
            self.proposer.finish(seq.seq_id, seq.tokens)
