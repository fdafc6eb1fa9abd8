"""Tree-shaped drafts are verified exactly: greedy keeps the longest path of argmaxes, sampling keeps the
target's law (verifier_svc.rejection_sampler.verify_tree).

The law tests use a 6-token vocabulary where the target's row after a first token x is R[x]: the first
two emitted tokens must be distributed as p0(x) R[x](y). Outputs that stop after one token are
completed with a direct sample from R[x] (what the next round would emit), from a generator independent
of the verifier's streams. Chi-square goodness of fit at ALPHA = 1e-3 over seeds 0..n-1; a rule that
judges every sibling against p instead of the residual of the ones before fails the same test.
"""

from __future__ import annotations

from collections import Counter

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from scipy import stats

from proposer_svc.tree_expansion import TreeExpansion
from splitspec import draft_tree, seeded_noise
from splitspec.draft_tree import ROOT
from splitspec.logits_processing import target_probs
from splitspec.sparse_distribution import SparseDistribution
from verifier_svc import rejection_sampler
from verifier_svc.rejection_sampler import VerifyRequest, verify, verify_tree

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny tensors: a thread pool only adds waits

ALPHA = 1e-3
VOCAB = 6
FIRST_POSITION = 11
P0 = torch.tensor([0.30, 0.25, 0.20, 0.12, 0.08, 0.05], dtype=torch.float64)
R = torch.tensor(
    [
        [0.05, 0.10, 0.30, 0.30, 0.15, 0.10],
        [0.40, 0.05, 0.05, 0.20, 0.10, 0.20],
        [0.10, 0.35, 0.05, 0.20, 0.05, 0.25],
        [0.20, 0.05, 0.10, 0.15, 0.30, 0.20],
        [0.25, 0.25, 0.10, 0.10, 0.10, 0.20],
        [0.15, 0.15, 0.15, 0.15, 0.20, 0.20],
    ],
    dtype=torch.float64,
)
Q_ROOT = SparseDistribution(
    torch.arange(VOCAB), torch.tensor([0.05, 0.10, 0.15, 0.30, 0.25, 0.15], dtype=torch.float64)
)
Q_CHILD = SparseDistribution(torch.tensor([0, 1, 3]), torch.tensor([0.15, 0.55, 0.30], dtype=torch.float64))


def _logits(tokens: list[int], parents: list[int]) -> torch.Tensor:
    """Row 0 is p0; a depth-1 token x's row is R[x]; deeper rows are uniform (never judged here)."""
    rows = [P0]
    for token, depth in zip(tokens, draft_tree.depths(parents)):
        rows.append(R[token] if depth == 1 else torch.full((VOCAB,), 1.0 / VOCAB, dtype=torch.float64))
    return torch.stack(rows).log().to(torch.float32)


def _one_hot_tree(seed: int) -> tuple[list[int], list[int], list[SparseDistribution | None]]:
    """Three distinct root children (0, 1, 4), token 0 with two children (2, 3): as n-grams draft."""
    return [0, 1, 4, 2, 3], [-1, -1, -1, 0, 0], [None] * 5


def _sampled_tree(seed: int) -> tuple[list[int], list[int], list[SparseDistribution | None]]:
    """Three root children drawn i.i.d. from Q_ROOT, each with two children drawn i.i.d. from Q_CHILD,
    from the DRAFT streams (independent of the verifier's)."""
    tokens, parents, qs = [], [], []
    for j in range(3):
        noise = seeded_noise.exponentials(seed, FIRST_POSITION, seeded_noise.sibling(seeded_noise.DRAFT, j), VOCAB)
        tokens.append(int(torch.argmax(Q_ROOT.dense(VOCAB) / noise)))
        parents.append(-1)
        qs.append(Q_ROOT)
    for parent in range(3):
        for j in range(2):
            stream = seeded_noise.sibling(seeded_noise.DRAFT, 2 * parent + j + 8)
            noise = seeded_noise.exponentials(seed, FIRST_POSITION + 1, stream, VOCAB)
            tokens.append(int(torch.argmax(Q_CHILD.dense(VOCAB) / noise)))
            parents.append(parent)
            qs.append(Q_CHILD)
    return tokens, parents, qs


def _drawn_without_replacement_tree(seed: int) -> tuple[list[int], list[int], list[SparseDistribution | None]]:
    """As a draft model drafts a sampled tree (proposer_svc.tree_expansion.expand_drawn): three root
    children drawn from Q_ROOT without replacement, three below each from Q_CHILD, the 9 likeliest kept
    (acceptance 0.5), each token sent with the q it was drawn from; the drafter's streams, one per depth."""
    tree = TreeExpansion(budget=9, width=3)
    tree.expand_drawn(
        ROOT,
        Q_ROOT.dense(VOCAB),
        seeded_noise.exponentials(seed, FIRST_POSITION, seeded_noise.DRAFT, VOCAB),
        (0.5, 0.5),
    )
    for node in range(3):
        noise = seeded_noise.exponentials(seed, FIRST_POSITION + 1, seeded_noise.DRAFT, VOCAB)
        tree.expand_drawn(node, Q_CHILD.dense(VOCAB), noise, (0.5, 0.5))
    draft = tree.draft()
    return draft.token_ids, draft.parents, draft.q


def _sent_with_the_first_sibling_s_q(seed: int) -> tuple[list[int], list[int], list[SparseDistribution | None]]:
    """The same tree, every sibling sent with q itself, as if drawn with replacement: a broken draft."""
    tokens, parents, qs = _drawn_without_replacement_tree(seed)
    kids = draft_tree.children(parents)
    for siblings in kids.values():
        for child in siblings:
            qs[child] = qs[siblings[0]]
    return tokens, parents, qs


def _first_two(sampler, tree, n: int) -> list[tuple[int, int]]:
    completion = torch.Generator().manual_seed(2**20)
    outputs = []
    for seed in range(n):
        tokens, parents, qs = tree(seed)
        request = VerifyRequest(_logits(tokens, parents), tokens, qs, FIRST_POSITION, 1.0, 0, 1.0, seed, parents)
        result = sampler(request)
        assert [tokens[i] for i in result.path] == result.token_ids[: result.num_accepted]
        if result.path:
            assert result.path == draft_tree.path_to(parents, result.path[-1])
        out = result.token_ids
        if len(out) == 1:
            out = out + [int(torch.multinomial(R[out[0]], 1, generator=completion))]
        outputs.append((out[0], out[1]))
    return outputs


def _p_value(samples: list[tuple[int, int]]) -> float:
    counts = Counter(samples)
    cells = [(x, y) for x in range(VOCAB) for y in range(VOCAB)]
    expected = [len(samples) * float(P0[x] * R[x, y]) for x, y in cells]
    return float(stats.chisquare([counts[c] for c in cells], expected).pvalue)


def _judged_against_p(request: VerifyRequest) -> rejection_sampler.VerifyResult:
    """verify_tree with a broken multi-draft rule: every sibling is judged against p itself."""
    original = rejection_sampler._recursive_rejection

    def broken(p, options, req, position):
        for j, child in enumerate(options):
            draft, q = req.draft_token_ids[child], req.draft_q[child].dense(VOCAB)
            u = seeded_noise.uniform(req.seed, position, seeded_noise.sibling(seeded_noise.ACCEPT, j))
            if u * q[draft].item() < p[draft].item():
                return child, draft
        return original(p, options[-1:], req, position)

    rejection_sampler._recursive_rejection = broken
    try:
        return verify_tree(request)
    finally:
        rejection_sampler._recursive_rejection = original


TREES = {
    "one-hot siblings": _one_hot_tree,
    "siblings drawn from q": _sampled_tree,
    "siblings drawn without replacement": _drawn_without_replacement_tree,
}


@pytest.mark.parametrize("tree", TREES.values(), ids=TREES.keys())
def test_the_first_two_tokens_follow_the_target_law(tree) -> None:
    assert _p_value(_first_two(verify_tree, tree, 12000)) >= ALPHA


# a third of the samples: these rules are off by far more than the test can tell apart (p below 1e-50
# at 6000 samples), and the law tests above keep the full count
def test_judging_every_sibling_against_p_fails_the_same_test() -> None:
    assert _p_value(_first_two(_judged_against_p, _sampled_tree, 4000)) < ALPHA


def test_siblings_drawn_without_replacement_but_sent_with_q_itself_fail_the_same_test() -> None:
    assert _p_value(_first_two(verify_tree, _sent_with_the_first_sibling_s_q, 4000)) < ALPHA


def test_one_hot_siblings_commit_the_target_s_own_sample() -> None:
    """With one-hot siblings each committed token is the draw plain decoding makes at its position,
    whatever the tree: seeded output does not depend on the tree's shape."""
    for seed in range(200):
        tokens, parents, qs = _one_hot_tree(seed)
        logits = _logits(tokens, parents)
        result = verify_tree(VerifyRequest(logits, tokens, qs, FIRST_POSITION, 0.9, 0, 1.0, seed, parents))
        probs = target_probs(logits, 0.9, 0, 1.0)
        rows = [0] + [node + 1 for node in result.path]
        plain = [rejection_sampler.sample_target(probs[r], seed, FIRST_POSITION + i) for i, r in enumerate(rows)]
        assert result.token_ids == plain


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_greedy_keeps_the_longest_path_of_argmaxes(data) -> None:
    n = data.draw(st.integers(1, 10))
    parents = [data.draw(st.integers(-1, i - 1)) for i in range(n)]
    tokens = [data.draw(st.integers(0, 3)) for _ in range(n)]
    logits = torch.tensor(
        data.draw(st.lists(st.lists(st.integers(0, 3), min_size=4, max_size=4), min_size=n + 1, max_size=n + 1)),
        dtype=torch.float32,
    )
    logits += torch.arange(4) * 1e-3  # no ties
    result = verify_tree(VerifyRequest(logits, tokens, [None] * n, 0, 0.0, 0, 1.0, 0, parents))
    kids, node, expected = draft_tree.children(parents), -1, []
    while True:
        best = int(torch.argmax(logits[node + 1]))
        node = next((c for c in kids.get(node, []) if tokens[c] == best), None)
        expected.append(best)
        if node is None:
            break
    assert result.token_ids == expected


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_a_chain_is_verified_as_verify_verifies_it(data) -> None:
    """Bit for bit the same decisions on chains, greedy and sampled, every kind of draft."""
    k = data.draw(st.integers(1, 4))
    seed = data.draw(st.integers(0, 2**31))
    temperature = data.draw(st.sampled_from([0.0, 0.7, 1.0]))
    logits = torch.randn(k + 1, VOCAB, generator=torch.Generator().manual_seed(seed)) * 2
    tokens, qs = [], []
    for _ in range(k):
        kind = data.draw(st.sampled_from(["one-hot", "q"]))
        token = data.draw(st.integers(0, VOCAB - 1)) if kind == "one-hot" else data.draw(st.integers(0, 2))
        tokens.append(token)
        qs.append(
            None
            if kind == "one-hot"
            else SparseDistribution(torch.tensor([0, 1, 2]), torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64))
        )
    chain = VerifyRequest(logits, tokens, qs, 5, temperature, 0, 1.0, seed)
    tree = VerifyRequest(logits, tokens, qs, 5, temperature, 0, 1.0, seed, draft_tree.chain(k))
    expected, got = verify(chain), verify_tree(tree)
    assert (got.num_accepted, got.token_ids) == (expected.num_accepted, expected.token_ids)
    assert got.path == list(range(expected.num_accepted))
