"""One verify pass: the target scores every sequence's uncached tokens plus its drafts at once.

The caller owns the sequences (their committed tokens and sampling parameters) and commits what
this returns; `rollback` then cuts the KV cache back to every committed token but the last, which
discards the rejected drafts' positions.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Protocol

import torch

from splitspec.drafts import Draft, HiddenStates
from splitspec.logits_processing import apply_logit_bias, apply_min_p
from splitspec.models.runner import ForwardInput, ModelRunner
from splitspec.output_grammar import GrammarPlan, GrammarState
from splitspec.sampling_params import SamplingParams
from splitspec.token_ban import TokenBan
from splitspec.token_logprobs import token_logprobs
from splitspec.token_penalties import TokenPenalties
from splitspec_kernels.rejection_sampling import RejectionBatch
from verifier_svc.rejection_sampler import VerifyRequest, VerifyResult, build_rejection_batch, verify, verify_tree

RejectionSampler = Callable[[RejectionBatch], tuple[torch.Tensor, torch.Tensor]]


class VerifiableSequence(Protocol):
    seq_id: str
    tokens: list[int]
    prompt_len: int
    prompt_logprobs: list | None
    params: SamplingParams
    seed: int
    token_ban: TokenBan | None
    penalties: TokenPenalties | None
    grammar: GrammarState | None


class Verifier:
    def __init__(
        self,
        runner: ModelRunner,
        hidden_states: HiddenStates = HiddenStates.NONE,
        hidden_layers: tuple[int, ...] = (),
    ) -> None:
        """hidden_states: which of the target's hidden states results carry, for drafters that read
        them; hidden_layers: the inputs of these target layers, concatenated, in place of the final
        state (EAGLE-3). verify() can also choose per sequence."""
        self.runner = runner
        self.hidden_states = hidden_states
        self.hidden_layers = hidden_layers

    def forward_inputs(
        self, steps: list[tuple[VerifiableSequence, Draft]], hidden_states: list[HiddenStates] | None = None
    ) -> list[ForwardInput]:
        """Each step's tokens to feed and rows to score: its drafts' and the one after them, and, on the
        first pass of a sequence that asks for prompt logprobs, every row before them too."""
        inputs = []
        for i, (seq, draft) in enumerate(steps):
            cached = self.runner.cached_length(seq.seq_id)
            fed = seq.tokens[cached:] + draft.token_ids
            every_row = hidden_states is not None and hidden_states[i] == HiddenStates.ALL
            rows = len(draft.token_ids) + 1
            tree = draft.parents if draft.is_tree else None
            if _wants_prompt_rows(seq, cached):
                inputs.append(ForwardInput(seq.seq_id, fed, len(fed), len(fed) if every_row else rows, tree))
            else:
                inputs.append(ForwardInput(seq.seq_id, fed, rows, len(fed) if every_row else None, tree))
        return inputs

    def fits(self, steps: list[tuple[VerifiableSequence, Draft]]) -> bool:
        return self.runner.can_fit(self.forward_inputs(steps))

    def verify(
        self,
        steps: list[tuple[VerifiableSequence, Draft]],
        hidden_states: list[HiddenStates] | None = None,
        hidden_layers: list[tuple[int, ...]] | None = None,
    ) -> list[VerifyResult]:
        """Accepted drafts plus one correction or bonus token per sequence, in order.

        hidden_states: per sequence, which hidden states its result carries ("last": the state behind
        its last committed token; "all": those behind every token committed in this step, the
        prompt's included); hidden_layers: per sequence, the target layers whose inputs make a state
        (() the final state); None: this verifier's settings for all. They come back on the CPU, in the
        runner's dtype (drafters cast them to theirs).

        Logits on the CPU with the PyTorch kernels: each sequence is verified on its own, drawing only
        the random numbers it needs. Otherwise (a GPU, or Triton kernels) the whole batch is sampled
        where the logits are, and only the committed token ids come back: one host sync per pass.
        Both make the same decisions (tests/verifier/test_device_sampling.py).

        A sequence with structured output gets its grammar's mask at every row, is fed its draft only up
        to a token the grammar forbids, and has its grammar moved through the tokens returned, which the
        caller commits (splitspec.output_grammar).
        """
        modes = hidden_states if hidden_states is not None else [self.hidden_states] * len(steps)
        layers = hidden_layers if hidden_layers is not None else [self.hidden_layers] * len(steps)
        steps = [(seq, draft if self._verifies_tree(seq) else draft.main_chain()) for seq, draft in steps]
        for (seq, _), mode in zip(steps, modes):
            if _may_reuse_prefix(seq, mode, self.runner.cached_length(seq.seq_id)):
                self.runner.reuse_prefix(seq.seq_id, seq.tokens)
        plans = [seq.grammar.plan(draft.token_ids) if seq.grammar is not None else None for seq, draft in steps]
        fed = [(seq, draft if plan is None else _prefix(draft, plan.fed)) for (seq, draft), plan in zip(steps, plans)]
        inputs = self.forward_inputs(fed, modes)
        if any(mode != HiddenStates.NONE for mode in modes):
            wanted = {ids for mode, ids in zip(modes, layers) if mode != HiddenStates.NONE}
            aux = tuple(sorted({i for ids in wanted for i in ids}))
            # [sum(k + 1), vocab], [sum(hidden_rows), (len(aux) + 1) * hidden]: each aux layer's input, the final state
            logits, hidden = (
                self.runner.forward_with_hidden(inputs, aux) if aux else self.runner.forward_with_hidden(inputs)
            )
            hidden = _states_by_layers(hidden, aux, wanted)
        else:
            logits, hidden = self.runner.forward(inputs), None
        logits, prompt_rows = _split_prompt_rows(fed, inputs, logits)
        raw = _raw_rows_for_logprobs(fed, logits)  # before _requests bans tokens in place
        requests = self._requests(steps, fed, plans, logits)
        if logits.device.type == "cpu" and self.runner.kernels.name == "torch":
            results = [verify_tree(r) if r.parents else verify(r) for r in requests]
        else:
            results = _sample_trees_on_host(requests, self.runner.kernels.rejection_sample)
        for inp, request, result in zip(inputs, requests, results):
            if request.parents:  # the accepted path's KV moves into place; its siblings' is dropped
                before_tree = len(inp.token_ids) - len(request.parents)
                start = self.runner.cached_length(inp.seq_id) - len(inp.token_ids)
                kept = list(range(before_tree)) + [before_tree + node for node in result.path]
                self.runner.keep_rows(inp.seq_id, start, kept)
        for i, rows in raw.items():
            result, top = results[i], steps[i][0].params.logprobs
            kept = rows[: result.num_accepted + 1] if result.path is None else rows[[0, *(1 + n for n in result.path)]]
            results[i].logprobs = token_logprobs(kept, result.token_ids, top)
        for i, rows in prompt_rows.items():
            seq = steps[i][0]
            results[i].prompt_logprobs = token_logprobs(
                rows, seq.tokens[1 : seq.prompt_len], seq.params.prompt_logprobs
            )
        if hidden is not None:
            _attach_hidden_states(results, inputs, modes, layers, hidden)
        for (seq, _), result in zip(steps, results):
            if seq.grammar is not None:
                seq.grammar.advance(result.token_ids)
        return results

    def _verifies_tree(self, seq: VerifiableSequence) -> bool:
        """Whether a tree-shaped draft of this sequence is verified as a tree; otherwise its main chain
        is. Trees are verified where every row's treatment depends on its position and the tokens
        before it only through the draft's own path (penalties and min_tokens bans read the row's path):
        not yet with a grammar, whose state would have to fork at every branch, nor on a runner that
        cannot attend a tree. Hidden states and logprobs come from the kept path's rows."""
        return (
            self.runner.supports_trees
            and seq.grammar is None
            and not _wants_prompt_rows(seq, self.runner.cached_length(seq.seq_id))
        )

    @staticmethod
    def _requests(
        steps: list[tuple[VerifiableSequence, Draft]],
        fed: list[tuple[VerifiableSequence, Draft]],
        plans: list[GrammarPlan | None],
        logits: torch.Tensor,
    ) -> list[VerifyRequest]:
        """Each step's rows, with its ban, logit bias, penalties, grammar mask and min-p applied, judging its draft: the fed
        part, then the forbidden token after it if any (GrammarPlan.judged). That token is judged at the
        last fed row and rejected for certain, so the row after it, which no pass computed, is never
        read: a copy of the last stands in for it."""
        requests, row = [], 0
        for (seq, draft), (_, fed_draft), plan in zip(steps, fed, plans):
            k = len(fed_draft.token_ids)
            rows = logits[row : row + k + 1]
            tree = fed_draft.parents if fed_draft.is_tree else None
            if seq.token_ban is not None:
                seq.token_ban.apply(rows, len(seq.tokens), tree)
            if seq.params.logit_bias is not None:
                apply_logit_bias(rows, seq.params.logit_bias)
            if seq.penalties is not None:
                seq.penalties.apply(rows, seq.tokens, fed_draft.token_ids, tree)
            judged = fed_draft
            if plan is not None:
                GrammarState.apply(rows, plan.bitmask)
                judged = _prefix(draft, plan.judged)
                if plan.judged > k:
                    rows = torch.cat([rows, rows[-1:]])
            if not seq.params.greedy:
                apply_min_p(rows, seq.params.min_p, seq.params.temperature)
            requests.append(
                VerifyRequest(
                    logits=rows,
                    draft_token_ids=judged.token_ids,
                    draft_q=judged.q,
                    first_position=len(seq.tokens),
                    temperature=seq.params.temperature,
                    top_k=seq.params.top_k,
                    top_p=seq.params.top_p,
                    seed=seq.seed,
                    parents=tree,
                )
            )
            row += k + 1
        return requests

    def rollback(self, seq: VerifiableSequence) -> None:
        """Keep KV for every committed token but the last (it is fed again with the next drafts); the
        full blocks of committed tokens join the prefix cache."""
        self.runner.truncate(seq.seq_id, len(seq.tokens) - 1)
        self.runner.cache_prefix(seq.seq_id, seq.tokens)

    def free(self, seq_id: str) -> None:
        self.runner.free(seq_id)


def _may_reuse_prefix(seq: VerifiableSequence, mode: HiddenStates, cached: int) -> bool:
    """A sequence's first pass may start after cached blocks of its prefix, unless it needs a row for
    every prompt token: its prompt's logprobs, or every hidden state (EAGLE heads attend over them)."""
    return cached == 0 and mode != HiddenStates.ALL and not _wants_prompt_rows(seq, cached)


def _wants_prompt_rows(seq: VerifiableSequence, cached: int) -> bool:
    """Its prompt's logprobs are asked for and not yet computed, and this pass feeds the whole prompt."""
    return seq.params.prompt_logprobs is not None and seq.prompt_logprobs is None and cached == 0 and seq.prompt_len > 1


def _split_prompt_rows(
    steps: list[tuple[VerifiableSequence, Draft]], inputs: list[ForwardInput], logits: torch.Tensor
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The pass's logits without the rows scoring prompts (forward_inputs), and those rows per step,
    row j scoring prompt token j + 1."""
    prompt_rows: dict[int, torch.Tensor] = {}
    keep, row = [], 0
    for i, ((seq, draft), inp) in enumerate(zip(steps, inputs)):
        extra = inp.num_logits - len(draft.token_ids) - 1
        if extra:
            prompt_rows[i] = logits[row : row + seq.prompt_len - 1]
        keep.extend(range(row + extra, row + inp.num_logits))
        row += inp.num_logits
    if not prompt_rows:
        return logits, prompt_rows
    return logits[torch.tensor(keep, device=logits.device)], prompt_rows


def _prefix(draft: Draft, n: int) -> Draft:
    return draft if n == len(draft.token_ids) else Draft(draft.token_ids[:n], draft.q[:n])


def _raw_rows_for_logprobs(
    steps: list[tuple[VerifiableSequence, Draft]], logits: torch.Tensor
) -> dict[int, torch.Tensor]:
    """The logits rows, copied, of each step whose request asks for logprobs."""
    rows, row = {}, 0
    for i, (seq, draft) in enumerate(steps):
        k = len(draft.token_ids)
        if seq.params.logprobs is not None:
            rows[i] = logits[row : row + k + 1].clone()
        row += k + 1
    return rows


def _sample_trees_on_host(requests: list[VerifyRequest], rejection_sample: RejectionSampler) -> list[VerifyResult]:
    """The chains verified on the device as one batch; each tree on the host (verify_tree)."""
    chains = [r for r in requests if not r.parents]
    sampled = iter(sample_on_device(chains, rejection_sample) if chains else [])
    return [verify_tree(replace(r, logits=r.logits.cpu())) if r.parents else next(sampled) for r in requests]


def sample_on_device(requests: list[VerifyRequest], rejection_sample: RejectionSampler) -> list[VerifyResult]:
    """Verify the whole batch where its logits are; the results' token ids are the only host copy."""
    accepted, tokens = rejection_sample(build_rejection_batch(requests))
    host = torch.cat([accepted[:, None], tokens], dim=1).cpu()  # the pass's one sync
    return [VerifyResult(int(row[0]), row[1 : int(row[0]) + 2].tolist()) for row in host]


def _states_by_layers(
    hidden: torch.Tensor, aux: tuple[int, ...], wanted: set[tuple[int, ...]]
) -> dict[tuple[int, ...], torch.Tensor]:
    """hidden [rows, (len(aux) + 1) * H] -> for each wanted layer set, its columns [rows, len(set) * H]
    (() the final state alone)."""
    if not aux:
        return {(): hidden}
    blocks = hidden.view(len(hidden), len(aux) + 1, -1)  # [rows, len(aux) + 1, H]
    return {ids: blocks[:, [aux.index(i) for i in ids] if ids else [len(aux)]].flatten(1) for ids in wanted}


def _attach_hidden_states(
    results: list[VerifyResult],
    inputs: list[ForwardInput],
    modes: list[HiddenStates],
    layers: list[tuple[int, ...]],
    hidden: dict[tuple[int, ...], torch.Tensor],
) -> None:
    """Give each result the hidden states it asked for, gathered on the device and copied in one go
    per layer set: "last", the row behind its last committed token [width]; "all", the rows behind
    every token committed in this step [n, width]. A tree's committed drafts are its kept path's."""
    wanted: dict[tuple[int, ...], list[tuple[VerifyResult, HiddenStates, torch.Tensor]]] = {}
    row = 0
    for inp, mode, ids, result in zip(inputs, modes, layers, results):
        accepted = list(range(result.num_accepted)) if result.path is None else result.path
        if mode == HiddenStates.LAST:  # rows are the k + 1 logit rows: the last committed token's, then each draft's
            last = 1 + accepted[-1] if accepted else 0
            wanted.setdefault(ids, []).append((result, mode, torch.tensor([row + last])))
        elif mode == HiddenStates.ALL:  # rows are every fed token's; keep the committed ones
            before_drafts = len(inp.token_ids) - inp.num_logits + 1
            kept = list(range(before_drafts)) + [before_drafts + node for node in accepted]
            wanted.setdefault(ids, []).append((result, mode, row + torch.tensor(kept)))
        row += inp.hidden_rows
    for ids, picks in wanted.items():
        rows = torch.cat([rows for _, _, rows in picks]).to(hidden[ids].device)
        states = hidden[ids][rows].cpu()  # in the target's dtype: half the bytes on the wire in bfloat16
        for (result, mode, _), part in zip(picks, states.split([len(rows) for _, _, rows in picks])):
            result.hidden_state = part[0] if mode == HiddenStates.LAST else part
