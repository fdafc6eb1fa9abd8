"""The verify pass's device path (the whole batch sampled where the logits are, one host copy of the
committed ids) makes exactly the decisions of the per-sequence CPU sampler, here on CPU tensors."""

from __future__ import annotations

import pytest
import torch
from verify_requests import random_verify_requests

from splitspec.config import RunnerConfig
from splitspec.drafts import Draft, HiddenStates
from splitspec.logits_processing import batched_target_probs, target_probs
from splitspec.models.loader import load_runner
from splitspec.sampling_params import SamplingParams
from splitspec.sequence import Sequence
from splitspec.token_penalties import TokenPenalties
from splitspec_kernels.rejection_sampling import rejection_sample_reference, rejection_sample_triton
from splitspec_kernels.triton_support import triton_available
from verifier_svc.rejection_sampler import verify
from verifier_svc.verifier import Verifier, sample_on_device

KERNELS = [pytest.param(rejection_sample_reference, id="torch")] + [
    pytest.param(
        rejection_sample_triton,
        id="triton",
        marks=pytest.mark.skipif(not triton_available(), reason="Triton is not installed"),
    )
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("num_seqs,seed", [(1, s) for s in range(8)] + [(16, s) for s in range(3)])
def test_device_path_makes_the_cpu_sampler_s_decisions(kernel, num_seqs: int, seed: int) -> None:
    requests = random_verify_requests(seed, vocab=257, num_seqs=num_seqs, max_drafts=6)
    got = [(r.num_accepted, r.token_ids) for r in sample_on_device(requests, kernel)]
    assert got == [(r.num_accepted, r.token_ids) for r in map(verify, requests)]


def test_every_kind_of_row_is_exercised() -> None:
    """The requests above mix greedy and sampled sequences, one-hot and sparse-q drafts, and each is
    accepted somewhere and rejected somewhere: otherwise the comparison proves less than it says."""
    requests = [r for s in range(3) for r in random_verify_requests(s, vocab=257, num_seqs=16, max_drafts=6)]
    results = [verify(r) for r in requests]
    kinds = set()
    for request, result in zip(requests, results):
        for i, q in enumerate(request.draft_q):
            kind = "greedy" if request.temperature == 0 else ("one-hot" if q is None else "sparse")
            kinds.add((kind, "accepted" if i < result.num_accepted else "rejected"))
            if i >= result.num_accepted:
                break
    assert kinds == {(k, outcome) for k in ("greedy", "one-hot", "sparse") for outcome in ("accepted", "rejected")}


def test_batched_target_probs_equal_per_request_ones_bit_for_bit() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 500, generator=generator) * 4
    settings = [(1.0, -1, 1.0), (0.7, 40, 1.0), (1.3, 0, 0.9), (0.5, 10, 0.5), (2.0, 500, 0.99), (1.0, 1, 1.0)]
    batched = batched_target_probs(
        logits,
        torch.tensor([t for t, _, _ in settings], dtype=torch.float64),
        torch.tensor([k for _, k, _ in settings]),
        torch.tensor([p for _, _, p in settings], dtype=torch.float64),
    )
    for row, (t, k, p) in enumerate(settings):
        assert torch.equal(batched[row], target_probs(logits[row : row + 1], t, k, p)[0])


@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_hidden_states_from_the_device_path_equal_the_cpu_path(tiny_llama, temperature: float) -> None:
    """The batched path gathers every sequence's hidden states in one copy; each result gets exactly
    the rows the per-sequence path gives it ("last": one state, "all": every committed token's)."""
    prompts = [[5, 6, 7, 8, 9, 5, 6], [17, 3, 4], list(range(30, 50))]
    drafts = [[5, 6, 7], [9], [50, 51]]
    modes = [HiddenStates.LAST, HiddenStates.ALL, HiddenStates.NONE]
    params = SamplingParams(temperature=temperature, max_tokens=8)
    results = {}
    for backend in ("torch", "triton"):
        verifier = Verifier(load_runner(tiny_llama, RunnerConfig(kernel_backend=backend)))
        steps = [(Sequence(f"s{i}", None, p, params, seed=i), Draft(d, [None] * len(d))) for i, (p, d) in
                 enumerate(zip(prompts, drafts))]  # fmt: skip
        results[backend] = verifier.verify(steps, modes)
    for cpu, device in zip(results["torch"], results["triton"]):
        assert (device.num_accepted, device.token_ids) == (cpu.num_accepted, cpu.token_ids)
        if cpu.hidden_state is None:
            assert device.hidden_state is None
        else:
            assert device.hidden_state.shape == cpu.hidden_state.shape
            torch.testing.assert_close(device.hidden_state, cpu.hidden_state)
    last, every, _ = results["triton"]
    assert last.hidden_state.shape == (64,)
    assert every.hidden_state.shape == (len(prompts[1]) + every.num_accepted, 64)


def test_sequences_of_one_pass_get_the_layers_they_ask_for(tiny_llama_8_layers) -> None:
    """An EAGLE-3 sequence's rows are the inputs of its layers, an EAGLE one's the final state, in the
    same pass: each equals what a pass of that sequence alone returns (where the EAGLE sequence's pass
    captures no layer)."""
    prompts = [[5, 6, 7, 8, 9, 5, 6], [17, 3, 4], list(range(30, 50))]
    modes = [HiddenStates.ALL, HiddenStates.ALL, HiddenStates.LAST]
    layers = [(2, 4, 5), (), (1, 6, 7)]
    params = SamplingParams(temperature=0, max_tokens=8)

    def run(indexes: list[int]) -> list:
        verifier = Verifier(load_runner(tiny_llama_8_layers, RunnerConfig()))
        steps = [(Sequence(f"s{i}", None, prompts[i], params, seed=i), Draft([9, 9], [None, None])) for i in indexes]
        return verifier.verify(steps, [modes[i] for i in indexes], [layers[i] for i in indexes])

    together = run([0, 1, 2])
    for i, result in enumerate(together):
        (alone,) = run([i])
        assert result.hidden_state.shape[-1] == 64 * max(len(layers[i]), 1)
        torch.testing.assert_close(result.hidden_state, alone.hidden_state)


def test_states_come_back_in_the_target_s_dtype(tiny_llama_8_layers) -> None:
    """A bfloat16 target's states stay bfloat16 (half the bytes a float32 copy would put on the wire),
    and equal the pass's own rows."""
    from splitspec.rpc import wire

    params = SamplingParams(temperature=0, max_tokens=8)
    runner = load_runner(tiny_llama_8_layers, RunnerConfig(dtype="bfloat16"))
    steps = [(Sequence("s", None, [5, 6, 7, 8, 9], params, seed=0), Draft([9], [None]))]
    (result,) = Verifier(runner).verify(steps, [HiddenStates.ALL], [(2, 4, 5)])
    assert result.hidden_state.dtype == torch.bfloat16 and result.hidden_state.shape[-1] == 3 * 64
    sent = wire.tensor_to_proto(result.hidden_state)
    assert len(sent.data) == result.hidden_state.numel() * 2
    assert torch.equal(wire.tensor_from_proto(sent), result.hidden_state)


@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
def test_shaped_logits_make_the_same_decisions_on_the_device_path(tiny_llama) -> None:
    """logit_bias, min_p and penalties shape the rows before either path samples them: the batched path
    decides as the per-sequence one does, greedy and sampled."""
    prompts = [[5, 6, 7, 8, 9, 5, 6], [17, 3, 4], list(range(30, 50))]
    drafts = [[5, 6, 7], [9, 10], [50, 51, 52]]
    shaped = [
        SamplingParams(temperature=0, max_tokens=8, logit_bias={5: 3.0, 9: -2.0}, frequency_penalty=0.5),
        SamplingParams(temperature=0.9, max_tokens=8, min_p=0.2, logit_bias={10: 2.0}),
        SamplingParams(temperature=1.3, max_tokens=8, min_p=0.05, repetition_penalty=1.3),
    ]
    results = {}
    for backend in ("torch", "triton"):
        verifier = Verifier(load_runner(tiny_llama, RunnerConfig(kernel_backend=backend)))
        for seed in range(4):
            steps = [(Sequence(f"s{i}", None, p, params, seed=seed), Draft(d, [None] * len(d)))
                     for i, (p, d, params) in enumerate(zip(prompts, drafts, shaped))]  # fmt: skip
            for seq, _ in steps:
                seq.penalties = TokenPenalties.for_request(seq.params, len(seq.tokens))
            results[backend, seed] = [(r.num_accepted, r.token_ids) for r in verifier.verify(steps)]
            for seq, _ in steps:
                verifier.free(seq.seq_id)
    assert all(results["torch", s] == results["triton", s] for s in range(4))
