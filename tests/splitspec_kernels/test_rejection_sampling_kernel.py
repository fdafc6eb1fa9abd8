"""The batched rejection sampler: Triton kernel == PyTorch reference == verifier_svc's sampler."""

from __future__ import annotations

import pytest
import torch
from verify_requests import random_verify_requests

from splitspec_kernels.rejection_sampling import RejectionBatch, rejection_sample_reference, rejection_sample_triton
from splitspec_kernels.triton_support import triton_available
from verifier_svc.rejection_sampler import build_rejection_batch, verify


def _as_lists(accepted: torch.Tensor, tokens: torch.Tensor) -> list[tuple[int, list[int]]]:
    return [(int(a), [t for t in row.tolist() if t >= 0]) for a, row in zip(accepted, tokens)]


@pytest.mark.parametrize("seed", range(6))
def test_reference_makes_the_verifier_s_decisions(seed: int) -> None:
    requests = random_verify_requests(seed, vocab=300, num_seqs=12, max_drafts=6)
    got = _as_lists(*rejection_sample_reference(build_rejection_batch(requests)))
    want = [(r.num_accepted, r.token_ids) for r in map(verify, requests)]
    assert got == want
    assert any(0 < a < len(r.draft_token_ids) for (a, _), r in zip(got, requests)), "no partial acceptance seen"


@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
@pytest.mark.parametrize("seed,vocab", [(0, 300), (1, 1500), (2, 2048), (3, 77)])
def test_triton_kernel_equals_reference(seed: int, vocab: int) -> None:
    batch = build_rejection_batch(random_verify_requests(seed, vocab=vocab, num_seqs=10, max_drafts=5))
    want_accepted, want_tokens = rejection_sample_reference(batch)
    got_accepted, got_tokens = rejection_sample_triton(batch)
    assert torch.equal(got_accepted, want_accepted)
    assert torch.equal(got_tokens, want_tokens)


@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
def test_triton_kernel_breaks_ties_like_torch_argmax() -> None:
    vocab = 2500  # ties in different chunks of the kernel's vocab loop
    target = torch.zeros(2, vocab, dtype=torch.float64)
    target[0, [1500, 30, 2400]] = 5.0  # greedy row: first maximum is 30
    target[1, [2100, 1100]] = 5.0
    batch = RejectionBatch(
        target=target,
        row_start=torch.tensor([0, 1]),
        num_drafts=torch.tensor([0, 0]),
        draft_tokens=torch.zeros(2, 0, dtype=torch.int64),
        greedy=torch.tensor([True, True]),
        q_ids=torch.zeros(2, 0, 1, dtype=torch.int64),
        q_probs=torch.zeros(2, 0, 1, dtype=torch.float64),
        q_count=torch.zeros(2, 0, dtype=torch.int64),
        accept_uniform=torch.zeros(2, 0, dtype=torch.float64),
        target_noise=torch.ones(2, vocab, dtype=torch.float64),
        residual_noise=torch.ones(2, vocab, dtype=torch.float64),
    )
    _, tokens = rejection_sample_triton(batch)
    assert tokens[:, 0].tolist() == [30, 1100]
    assert torch.equal(tokens, rejection_sample_reference(batch)[1])
