"""One verify pass: the target scores every sequence's uncached tokens plus its drafts at once.

The caller owns the sequences (their committed tokens and sampling parameters) and commits what
this returns; `rollback` then cuts the KV cache back to every committed token but the last, which
discards the rejected drafts' positions.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from splitspec.drafts import Draft, HiddenStates
from splitspec.models.runner import ForwardInput, ModelRunner
from splitspec.sampling_params import SamplingParams
from splitspec_kernels.rejection_sampling import RejectionBatch
from verifier_svc.rejection_sampler import VerifyRequest, VerifyResult, build_rejection_batch, verify

RejectionSampler = Callable[[RejectionBatch], tuple[torch.Tensor, torch.Tensor]]


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
        prompt's included); None: this verifier's setting for all. They come back on the CPU.

        Logits on the CPU with the PyTorch kernels: each sequence is verified on its own, drawing only
        the random numbers it needs. Otherwise (a GPU, or Triton kernels) the whole batch is sampled
        where the logits are, and only the committed token ids come back: one host sync per pass.
        Both make the same decisions (tests/verifier/test_device_sampling.py).
        """
        modes = hidden_states if hidden_states is not None else [self.hidden_states] * len(steps)
        inputs = self.forward_inputs(steps, modes)
        if any(mode != HiddenStates.NONE for mode in modes):
            logits, hidden = self.runner.forward_with_hidden(inputs)  # [sum(k + 1), vocab], [sum(hidden_rows), hidden]
        else:
            logits, hidden = self.runner.forward(inputs), None
        requests = self._requests(steps, logits)
        if logits.device.type == "cpu" and self.runner.kernels.name == "torch":
            results = [verify(request) for request in requests]
        else:
            results = sample_on_device(requests, self.runner.kernels.rejection_sample)
        if hidden is not None:
            _attach_hidden_states(results, inputs, modes, hidden)
        return results

    @staticmethod
    def _requests(steps: list[tuple[VerifiableSequence, Draft]], logits: torch.Tensor) -> list[VerifyRequest]:
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
        return requests

    def rollback(self, seq: VerifiableSequence) -> None:
        """Keep KV for every committed token but the last (it is fed again with the next drafts)."""
        self.runner.truncate(seq.seq_id, len(seq.tokens) - 1)

    def free(self, seq_id: str) -> None:
        self.runner.free(seq_id)


def sample_on_device(requests: list[VerifyRequest], rejection_sample: RejectionSampler) -> list[VerifyResult]:
    """Verify the whole batch where its logits are; the results' token ids are the only host copy."""
    accepted, tokens = rejection_sample(build_rejection_batch(requests))
    host = torch.cat([accepted[:, None], tokens], dim=1).cpu()  # the pass's one sync
    return [VerifyResult(int(row[0]), row[1 : int(row[0]) + 2].tolist()) for row in host]


def _attach_hidden_states(
    results: list[VerifyResult], inputs: list[ForwardInput], modes: list[HiddenStates], hidden: torch.Tensor
) -> None:
    """Give each result the hidden states it asked for, gathered on the device and copied in one go:
    "last", the row behind its last committed token [hidden]; "all", the rows behind every token
    committed in this step [n, hidden]."""
    wanted: list[tuple[VerifyResult, HiddenStates, torch.Tensor]] = []
    row = 0
    for inp, mode, result in zip(inputs, modes, results):
        if mode == HiddenStates.LAST:  # rows are the k + 1 logit rows
            wanted.append((result, mode, torch.tensor([row + result.num_accepted])))
        elif mode == HiddenStates.ALL:  # rows are every fed token's; keep the committed ones
            committed = len(inp.token_ids) - inp.num_logits + 1 + result.num_accepted
            wanted.append((result, mode, torch.arange(row, row + committed)))
        row += inp.hidden_rows
    if not wanted:
        return
    states = hidden[torch.cat([rows for _, _, rows in wanted]).to(hidden.device)].to("cpu", torch.float32)
    for (result, mode, _), part in zip(wanted, states.split([len(rows) for _, _, rows in wanted])):
        result.hidden_state = part[0] if mode == HiddenStates.LAST else part
