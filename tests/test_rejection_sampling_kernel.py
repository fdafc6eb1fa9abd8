"""The batched rejection sampler: Triton kernel == PyTorch reference == verifier_svc's sampler."""

from __future__ import annotations

import random

import pytest
import torch

from kernels.rejection_sampling import RejectionBatch, rejection_sample_reference, rejection_sample_triton
from kernels.triton_support import triton_available
from splitspec.sparse_distribution import SparseDistribution
from verifier_svc.rejection_sampler import VerifyRequest, build_rejection_batch, verify


def _requests(seed: int, vocab: int, num_seqs: int, max_drafts: int) -> list[VerifyRequest]:
    """Greedy and sampled sequences, one-hot and sparse-q drafts, drafts often the target's favourite
    (so that some are accepted and some rejected at every position)."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    requests = []
    for _ in range(num_seqs):
        k = rng.randint(0, max_drafts)
        logits = torch.randn(k + 1, vocab, generator=generator) * 3
        greedy = rng.random() < 0.3
        sparse = not greedy and rng.random() < 0.6
        drafts, qs = [], []
        for i in range(k):
            top = torch.topk(logits[i], 4).indices.tolist()
            if sparse:
                ids = torch.tensor(rng.sample(top, 3) + [rng.randrange(vocab)]).unique()
                probs = torch.rand(len(ids), generator=generator, dtype=torch.float64) + 0.05
                q = SparseDistribution(ids, probs / probs.sum())
                drafts.append(int(ids[torch.multinomial(q.probs, 1, generator=generator)]))
                qs.append(q)
            else:
                drafts.append(top[0] if rng.random() < 0.6 else rng.randrange(vocab))
                qs.append(None)
        requests.append(
            VerifyRequest(
                logits=logits,
                draft_token_ids=drafts,
                draft_q=qs,
                first_position=rng.randrange(1000),
                temperature=0.0 if greedy else rng.choice([0.5, 1.0, 1.3]),
                top_k=rng.choice([-1, 20]),
                top_p=rng.choice([1.0, 0.9]),
                seed=rng.getrandbits(63),
            )
        )
    return requests


def _as_lists(accepted: torch.Tensor, tokens: torch.Tensor) -> list[tuple[int, list[int]]]:
    return [(int(a), [t for t in row.tolist() if t >= 0]) for a, row in zip(accepted, tokens)]


@pytest.mark.parametrize("seed", range(6))
def test_reference_makes_the_verifier_s_decisions(seed: int) -> None:
    requests = _requests(seed, vocab=300, num_seqs=12, max_drafts=6)
    got = _as_lists(*rejection_sample_reference(build_rejection_batch(requests)))
    want = [(r.num_accepted, r.token_ids) for r in map(verify, requests)]
    assert got == want
    assert any(0 < a < len(r.draft_token_ids) for (a, _), r in zip(got, requests)), "no partial acceptance seen"


@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
@pytest.mark.parametrize("seed,vocab", [(0, 300), (1, 1500), (2, 2048), (3, 77)])
def test_triton_kernel_equals_reference(seed: int, vocab: int) -> None:
    batch = build_rejection_batch(_requests(seed, vocab=vocab, num_seqs=10, max_drafts=5))
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
