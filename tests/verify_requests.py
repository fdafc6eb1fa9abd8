"""Random verify requests for the batched samplers' tests."""

from __future__ import annotations

import random

import torch

from splitspec.sparse_distribution import SparseDistribution
from verifier_svc.rejection_sampler import VerifyRequest


def random_verify_requests(seed: int, vocab: int, num_seqs: int, max_drafts: int) -> list[VerifyRequest]:
    """Greedy and sampled sequences, one-hot and sparse-q drafts, drafts often the target's favourite
    (so that some are accepted and some rejected at every position). The requests' logits are row
    slices of one tensor, as a verify pass hands them out."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    counts = [rng.randint(0, max_drafts) for _ in range(num_seqs)]
    all_logits = torch.randn(sum(counts) + num_seqs, vocab, generator=generator) * 3
    requests, row = [], 0
    for k in counts:
        logits = all_logits[row : row + k + 1]
        row += k + 1
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
