"""One verify pass: the target scores every sequence's uncached tokens plus its drafts at once.

The caller owns the sequences (their committed tokens and sampling parameters) and commits what
this returns; `rollback` then cuts the KV cache back to every committed token but the last, which
discards the rejected drafts' positions.
"""

from __future__ import annotations

from typing import Protocol

import torch

from splitspec.drafts import Draft, HiddenStates
from splitspec.models.runner import ForwardInput, ModelRunner
from splitspec.sampling_params import SamplingParams
from verifier_svc.rejection_sampler import VerifyRequest, VerifyResult, build_rejection_batch, verify


class VerifiableSequence(Protocol):
    seq_id: str
    tokens: list[int]
    params: SamplingParams
    seed: int


class Verifier:
    def __init__(self, runner: ModelRunner, hidden_states: HiddenStates = HiddenStates.NONE) -> None:
        """hidden_states: which of the target's hidden states results carry, for drafters that read
        them; verify() can also choose per sequence."""
        self.runner = runner
        self.hidden_states = hidden_states

    def forward_inputs(
        self, steps: list[tuple[VerifiableSequence, Draft]], hidden_states: list[HiddenStates] | None = None
    ) -> list[ForwardInput]:
        inputs = []
        for i, (seq, draft) in enumerate(steps):
            cached = self.runner.cached_length(seq.seq_id)
            fed = seq.tokens[cached:] + draft.token_ids
            every_row = hidden_states is not None and hidden_states[i] == HiddenStates.ALL
            inputs.append(ForwardInput(seq.seq_id, fed, len(draft.token_ids) + 1, len(fed) if every_row else None))
        return inputs

    def fits(self, steps: list[tuple[VerifiableSequence, Draft]]) -> bool:
        return self.runner.can_fit(self.forward_inputs(steps))

    def verify(
        self, steps: list[tuple[VerifiableSequence, Draft]], hidden_states: list[HiddenStates] | None = None
    ) -> list[VerifyResult]:
        """Accepted drafts plus one correction or bonus token per sequence, in order.

        hidden_states: per sequence, which hidden states its result carries ("last": the state behind
        its last committed token; "all": those behind every token committed in this step, the
        prompt's included); None: this verifier's setting for all.

        With Triton kernels the whole batch goes through one rejection-sampling kernel; otherwise
        each sequence is verified on its own, drawing only the random numbers it needs (the batched
        kernel's reference is checked to make the same decisions).
        """
        modes = hidden_states if hidden_states is not None else [self.hidden_states] * len(steps)
        inputs = self.forward_inputs(steps, modes)
        if any(mode != HiddenStates.NONE for mode in modes):
            logits, hidden = self.runner.forward_with_hidden(inputs)  # [sum(k + 1), vocab], [sum(hidden_rows), hidden]
        else:
            logits, hidden = self.runner.forward(inputs), None
        results = self._sample(steps, logits)
        if hidden is not None:
            row = 0
            for inp, mode, result in zip(inputs, modes, results):
                if mode == HiddenStates.LAST:  # rows are the k + 1 logit rows
                    result.hidden_state = hidden[row + result.num_accepted].clone()
                elif mode == HiddenStates.ALL:  # rows are every fed token's; keep the committed ones
                    committed = len(inp.token_ids) - inp.num_logits + 1 + result.num_accepted
                    result.hidden_state = hidden[row : row + committed].clone()
                row += inp.hidden_rows
        return results

    def _sample(self, steps: list[tuple[VerifiableSequence, Draft]], logits: torch.Tensor) -> list[VerifyResult]:
        requests, row = [], 0
        for seq, draft in steps:
            k = len(draft.token_ids)
            requests.append(
                VerifyRequest(
                    logits=logits[row : row + k + 1],
                    draft_token_ids=draft.token_ids,
                    draft_q=draft.q,
                    first_position=len(seq.tokens),
                    temperature=seq.params.temperature,
                    top_k=seq.params.top_k,
                    top_p=seq.params.top_p,
                    seed=seq.seed,
                )
            )
            row += k + 1
        kernels = self.runner.kernels
        if kernels.name == "torch":
            return [verify(request) for request in requests]
        accepted, tokens = kernels.rejection_sample(build_rejection_batch(requests))
        return [VerifyResult(int(n), out[: int(n) + 1].tolist()) for n, out in zip(accepted, tokens)]

    def rollback(self, seq: VerifiableSequence) -> None:
        """Keep KV for every committed token but the last (it is fed again with the next drafts)."""
        self.runner.truncate(seq.seq_id, len(seq.tokens) - 1)

    def free(self, seq_id: str) -> None:
        self.runner.free(seq_id)
