"""Lossless verification of a round of drafts against the target's logits.

Speculative sampling as in Leviathan et al. 2022 ("Fast Inference from Transformers via Speculative
Decoding") and Chen et al. 2023 ("Accelerating Large Language Model Decoding with Speculative
Sampling"). Words used for it here and everywhere else in splitspec:

- draft: a token the proposer guessed, with q, the exact distribution it was drawn from (None for a
  one-hot draft: n-gram, argmax drafters).
- p: the target's distribution at a position after temperature, top-k and top-p.
- accepted: a draft the rule keeps. Accepted drafts are always a prefix of the round's drafts.
- correction: the target's token at the first rejected position (vLLM calls it "recovered"): greedy,
  the target's argmax; sampled, a draw from the residual normalize(max(0, p - q)).
- bonus: the target's token after all K drafts were accepted, drawn from p at position K + 1.

A round commits its accepted drafts followed by exactly one correction or bonus token.

Greedy rows accept drafts while they equal the target's argmax. Sampled rows accept draft x with
probability min(1, p(x)/q(x)).

A draft with one-hot q is verified by drawing the target's own sample y with the position's TARGET
stream and accepting iff y equals the draft. That is the same rule in distribution (accept with
probability p(x); on rejection y is distributed as p without x, renormalized, which is exactly
normalize(max(0, p - onehot(x)))), and it makes seeded output identical with and without speculation,
because non-speculative decoding draws y from the same stream.

The rule has three implementations, each for a reason:
- `verify` (here): one sequence at a time, drawing only the random numbers that sequence needs. The
  CPU path, and the one a reader checks against the papers.
- `splitspec_kernels.rejection_sampling.rejection_sample_reference`: the whole batch at once in plain PyTorch,
  every random draw made beforehand by `build_rejection_batch` from the same seeded streams. It is
  the specification of the device kernel.
- `splitspec_kernels.rejection_sampling.rejection_sample_triton`: the same on the device, one program per
  sequence, so that logits never leave it.
tests/splitspec_kernels/test_rejection_sampling_kernel.py checks that the reference makes `verify`'s decisions and that
the Triton kernel equals the reference bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from splitspec import draft_tree, seeded_noise
from splitspec.devices import to_device
from splitspec.logits_processing import batched_target_probs, target_probs
from splitspec.sparse_distribution import SparseDistribution
from splitspec.token_logprobs import Logprob
from splitspec_kernels.rejection_sampling import RejectionBatch


@dataclass
class VerifyRequest:
    """One sequence's share of a verify pass.

    `logits` has one row per draft plus one: row i scores the token at absolute position
    `first_position + i`. `draft_q[i]` is None for a one-hot (deterministic) draft.
    """

    logits: torch.Tensor  # [num_drafts + 1, vocab]
    draft_token_ids: list[int]
    draft_q: list[SparseDistribution | None]
    first_position: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    parents: list[int] | None = None
    """A tree-shaped draft's parents (splitspec.draft_tree): row 0 scores the root children, row 1 + i
    the children of draft token i. None: a chain."""


@dataclass
class VerifyResult:
    num_accepted: int
    token_ids: list[int]  # the accepted drafts followed by the correction or bonus token
    path: list[int] | None = None
    """A tree's accepted draft tokens, by index in the draft (None for a chain: the first num_accepted)."""
    logprobs: list[dict[int, Logprob]] | None = None
    """When the request asks for them: per token, the target's log-probabilities (token_logprobs)."""
    prompt_logprobs: list[dict[int, Logprob]] | None = None
    """On a sequence's first pass, when it asks for them: per prompt token after the first."""
    hidden_state: torch.Tensor | None = None
    """When asked for: the target's final hidden state at the row that produced the last token [hidden],
    or at every row that produced a token committed in this step [n, hidden] (see Verifier.verify)."""


def verify(request: VerifyRequest) -> VerifyResult:
    drafts = request.draft_token_ids
    if request.temperature == 0:
        return _verify_greedy(request.logits, drafts)
    probs = target_probs(request.logits, request.temperature, request.top_k, request.top_p)
    out: list[int] = []
    for i, draft in enumerate(drafts):
        position = request.first_position + i
        q = request.draft_q[i]
        if q is None:
            y = sample_target(probs[i], request.seed, position)
            out.append(y)
            if y != draft:
                return VerifyResult(i, out)
            continue
        q_dense = q.dense(probs.shape[-1])
        q_x = q_dense[draft].item()
        p_x = probs[i, draft].item()
        if q_x <= 0:
            raise ValueError(f"draft token {draft} has zero probability under its own q")
        if seeded_noise.uniform(request.seed, position, seeded_noise.ACCEPT) * q_x < p_x:
            out.append(draft)
            continue
        residual = torch.clamp(probs[i] - q_dense, min=0.0)
        correction = _race(residual, request.seed, position, seeded_noise.RESIDUAL)
        return VerifyResult(i, out + [correction])
    bonus = sample_target(probs[len(drafts)], request.seed, request.first_position + len(drafts))
    return VerifyResult(len(drafts), out + [bonus])


def verify_tree(request: VerifyRequest) -> VerifyResult:
    """A tree-shaped draft: walk down from the last committed token, at each token choosing among its
    children, and stop at the first token none of them is kept for, with its correction (or, at a
    leaf, the bonus token).

    Among a token's children, by how they were drafted:
    - greedy: the child equal to the target's argmax, if any;
    - one-hot children (distinct tokens, q None): the target draws its own sample y from the
      position's TARGET stream, and the child equal to y is kept, if any; else y is the correction. Each
      committed token is then exactly the target's sample, the token plain decoding draws there: seeded
      output does not change with the tree's shape;
    - children drawn from q (x_1..x_m, tried in the order drawn, x_j sent with q_j, the distribution
      it was drawn from given x_1..x_{j-1}: q itself when drawn i.i.d. (SpecInfer, Miao et al. 2023),
      q without x_1..x_{j-1}, renormalized, when drawn without replacement (as Jeon et al. 2024's
      recursive speculative decoding)): recursive rejection sampling. With r_1 = p, child j is kept with
      probability min(1, r_j(x_j) / q_j(x_j)); if not, r_{j+1} = normalize(max(0, r_j - q_j)) and the
      next child is tried; after the last, the correction is drawn from r_{m+1}.

    Why the last rule is exact: one step is plain speculative sampling of a target r with a draft
    x ~ q, which keeps x with mass min(r(x), q(x)) and rejects with probability
    beta = sum(max(0, r - q)); a token drawn from normalize(max(0, r - q)) after a rejection makes the
    step's output exactly r, as min(r, q) + max(0, r - q) = r. Replacing that final draw by another such
    step against the residual, with x_{j+1} ~ q_{j+1} given x_1..x_j (the draws are independent of the
    coins, so rejecting x_1..x_j says nothing more about x_{j+1}), outputs the residual exactly given
    x_1..x_j, by induction from the last step, which draws from its residual directly. So the token kept
    at each position is distributed as p, and the walk continues below it with the drafts drawn
    conditionally on it, as the next position of plain sampling would. With one child per token every
    rule is the chain's rule of `verify`, drawing from the same streams.
    """
    parents = request.parents or []
    kids = draft_tree.children(parents)
    greedy = request.temperature == 0
    probs = None if greedy else target_probs(request.logits, request.temperature, request.top_k, request.top_p)
    node, path, tokens = draft_tree.ROOT, [], []
    while True:
        row, position = node + 1, request.first_position + len(path)
        options = kids.get(node, [])
        if greedy:
            best = int(torch.argmax(request.logits[row]).item())
            chosen = next((c for c in options if request.draft_token_ids[c] == best), None)
            token = best
        elif not options or request.draft_q[options[0]] is None:
            token = sample_target(probs[row], request.seed, position)
            chosen = next((c for c in options if request.draft_token_ids[c] == token), None)
        else:
            chosen, token = _recursive_rejection(probs[row], options, request, position)
        if chosen is None:
            return VerifyResult(len(path), tokens + [token], path=path)
        path.append(chosen)
        tokens.append(token)
        node = chosen


def _recursive_rejection(
    p: torch.Tensor, options: list[int], request: VerifyRequest, position: int
) -> tuple[int | None, int]:
    """(the sibling kept or None, the token committed) for siblings drawn from q, each with its own q_j (verify_tree)."""
    residual = p.to(torch.float64)  # r_j, normalized
    for j, child in enumerate(options):
        draft, q = request.draft_token_ids[child], request.draft_q[child]
        q_dense = q.dense(p.shape[-1])
        q_x = q_dense[draft].item()
        if q_x <= 0:
            raise ValueError(f"draft token {draft} has zero probability under its own q")
        u = seeded_noise.uniform(request.seed, position, seeded_noise.sibling(seeded_noise.ACCEPT, j))
        if u * q_x < residual[draft].item():
            return child, draft
        rest = torch.clamp(residual - q_dense, min=0.0)
        total = rest.sum().item()
        if total <= 0:
            break
        residual = rest / total
    return None, _race(rest, request.seed, position, seeded_noise.RESIDUAL)


def sample_target(probs: torch.Tensor, seed: int, position: int) -> int:
    """The target's own sample at a position: what non-speculative decoding emits there."""
    return _race(probs, seed, position, seeded_noise.TARGET)


def _race(weights: torch.Tensor, seed: int, position: int, purpose: int) -> int:
    """Exact sample from normalize(weights) (weights need not sum to one)."""
    noise = seeded_noise.exponentials(seed, position, purpose, weights.shape[-1])
    return int(torch.argmax(weights.to(torch.float64) / noise).item())


def _verify_greedy(logits: torch.Tensor, drafts: list[int]) -> VerifyResult:
    best = torch.argmax(logits, dim=-1).tolist()  # [num_drafts + 1]
    accepted = 0
    while accepted < len(drafts) and drafts[accepted] == best[accepted]:
        accepted += 1
    return VerifyResult(accepted, drafts[:accepted] + [best[accepted]])


def build_rejection_batch(requests: list[VerifyRequest]) -> RejectionBatch:
    """The batched kernels' input for these requests, on their logits' device, with every random
    draw verify() would make (and the ones it would not need), taken from the same seeded streams.

    The target rows are computed where the logits are (no host sync); the random draws are made on
    the host, as verify() makes them, and copied to the device without waiting for it.
    """
    device = requests[0].logits.device
    logits = torch.cat([r.logits for r in requests])  # [rows, vocab]
    rows, vocab = logits.shape
    max_drafts = max(len(r.draft_token_ids) for r in requests)
    q_width = max([1] + [len(q.token_ids) for r in requests for q in r.draft_q if q is not None])
    num_seqs = len(requests)
    greedy_row, temperature, top_k, top_p = [], [], [], []
    sampled_rows, sampled_noise, residual_rows, residual_noise = [], [], [], []
    draft_tokens = torch.zeros(num_seqs, max_drafts, dtype=torch.int64)
    q_ids = torch.zeros(num_seqs, max_drafts, q_width, dtype=torch.int64)
    q_probs = torch.zeros(num_seqs, max_drafts, q_width, dtype=torch.float64)
    q_count = torch.zeros(num_seqs, max_drafts, dtype=torch.int64)
    accept_uniform = torch.zeros(num_seqs, max_drafts, dtype=torch.float64)
    row_start, row = [], 0
    for b, r in enumerate(requests):
        k = len(r.draft_token_ids)
        row_start.append(row)
        greedy = r.temperature == 0
        greedy_row += [greedy] * (k + 1)
        temperature += [1.0 if greedy else r.temperature] * (k + 1)
        top_k += [r.top_k] * (k + 1)
        top_p += [r.top_p] * (k + 1)
        draft_tokens[b, :k] = torch.tensor(r.draft_token_ids, dtype=torch.int64)
        for i in range(k + 1):
            position = r.first_position + i
            if greedy:
                continue
            sampled_rows.append(row + i)
            sampled_noise.append(seeded_noise.exponentials(r.seed, position, seeded_noise.TARGET, vocab))
            q = r.draft_q[i] if i < k else None
            if q is not None:
                n = len(q.token_ids)
                q_ids[b, i, :n], q_probs[b, i, :n], q_count[b, i] = q.token_ids, q.probs.to(torch.float64), n
                accept_uniform[b, i] = seeded_noise.uniform(r.seed, position, seeded_noise.ACCEPT)
                residual_rows.append(row + i)
                residual_noise.append(seeded_noise.exponentials(r.seed, position, seeded_noise.RESIDUAL, vocab))
        row += k + 1

    def noise(indices: list[int], draws: list[torch.Tensor]) -> torch.Tensor:
        """Exp(1) draws at `indices`, ones elsewhere (rows that draw nothing from that stream)."""
        full = torch.ones(rows, vocab, dtype=torch.float64, device=device)
        if indices:
            full[to_device(indices, device)] = to_device(torch.stack(draws), device)
        return full

    target = logits.to(torch.float64)  # greedy rows compare logits
    if not all(greedy_row):
        sampled = [not g for g in greedy_row]
        probs = batched_target_probs(
            logits,
            to_device(temperature, device, torch.float64),
            to_device(top_k, device),
            to_device(top_p, device, torch.float64),
            uses_top_k=any(s and 0 < k < vocab for s, k in zip(sampled, top_k)),
            uses_top_p=any(s and p < 1.0 for s, p in zip(sampled, top_p)),
        )
        target = torch.where(to_device(greedy_row, device, torch.bool)[:, None], target, probs)
    return RejectionBatch(
        target=target,
        row_start=to_device(row_start, device),
        num_drafts=to_device([len(r.draft_token_ids) for r in requests], device),
        draft_tokens=to_device(draft_tokens, device),
        greedy=to_device([r.temperature == 0 for r in requests], device, torch.bool),
        q_ids=to_device(q_ids, device),
        q_probs=to_device(q_probs, device),
        q_count=to_device(q_count, device),
        accept_uniform=to_device(accept_uniform, device),
        target_noise=noise(sampled_rows, sampled_noise),
        residual_noise=noise(residual_rows, residual_noise),
    )
