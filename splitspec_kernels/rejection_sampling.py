"""Verification of a whole batch of drafts in one call: greedy and sampled rows mixed.

`rejection_sample_reference` (plain PyTorch) and `rejection_sample_triton` (one program per
sequence) take the same `RejectionBatch`, including every random draw, and return the same result
bit for bit. The rules, and the words accepted, correction and bonus, are those of
verifier_svc/rejection_sampler.py (tests/splitspec_kernels/test_rejection_sampling_kernel.py checks the reference
against it with that module's seeded draws):

- greedy sequence: drafts are accepted while they equal the argmax of the target logits; the argmax
  at the first mismatch is the correction (at the last row, the bonus);
- sampled sequence, one-hot draft (n-gram): the target's own sample y = argmax(p / E_target) is
  emitted; the draft is accepted iff y equals it (otherwise y is the correction);
- sampled sequence, draft with sparse q: x is accepted if u * q(x) < p(x); otherwise the correction
  argmax(max(0, p - q) / E_residual) is emitted and the row stops;
- after every draft was accepted, the bonus token argmax(p / E_target) at the last row.

argmax always returns the first of equal maxima, as torch.argmax does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from splitspec_kernels.triton_support import tl, triton


@dataclass
class RejectionBatch:
    target: torch.Tensor  # [rows, vocab] float64: logits for greedy sequences, probabilities for sampled
    row_start: torch.Tensor  # [batch] int64: sequence b owns rows row_start[b] .. row_start[b] + num_drafts[b]
    num_drafts: torch.Tensor  # [batch] int64
    draft_tokens: torch.Tensor  # [batch, max_drafts] int64, padded
    greedy: torch.Tensor  # [batch] bool
    q_ids: torch.Tensor  # [batch, max_drafts, q_width] int64: the tokens of each draft's sparse q
    q_probs: torch.Tensor  # [batch, max_drafts, q_width] float64: their probabilities (0 = padding)
    q_count: torch.Tensor  # [batch, max_drafts] int64: entries of q in use; 0 = one-hot draft
    accept_uniform: torch.Tensor  # [batch, max_drafts] float64: U(0, 1) per draft (ACCEPT stream)
    target_noise: torch.Tensor  # [rows, vocab] float64: Exp(1) per row (TARGET stream)
    residual_noise: torch.Tensor  # [rows, vocab] float64: Exp(1) per row (RESIDUAL stream)


def rejection_sample_reference(batch: RejectionBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (num_accepted [batch] int64, tokens [batch, max_drafts + 1] int64 padded with -1).

    Every row is decided at once, including rows after a sequence's first rejection (their results
    are dropped), so the whole batch runs on the tensors' device without a host sync.
    """
    num_seqs, max_drafts = batch.draft_tokens.shape
    rows = batch.target.shape[0]
    device = batch.target.device
    seq = torch.repeat_interleave(torch.arange(num_seqs, device=device), batch.num_drafts + 1, output_size=rows)
    index = torch.arange(rows, device=device) - batch.row_start[seq]  # [rows]: position within its sequence
    is_draft = index < batch.num_drafts[seq]

    def per_row(per_draft: torch.Tensor, pad: float) -> torch.Tensor:
        """[batch, max_drafts, ...] -> [rows, ...]; the bonus row (index k) reads the padding."""
        padding = per_draft.new_full((num_seqs, 1, *per_draft.shape[2:]), pad)
        return torch.cat([per_draft, padding], dim=1)[seq, index]

    draft = per_row(batch.draft_tokens, -1)
    sparse = ~batch.greedy[seq] & (per_row(batch.q_count, 0) > 0)  # only draft rows have q
    # greedy rows: argmax of the logits (their noise is all ones); the others: the target's own sample
    own = torch.argmax(batch.target / batch.target_noise, dim=-1)
    q = torch.zeros_like(batch.target).scatter_add_(-1, per_row(batch.q_ids, 0), per_row(batch.q_probs, 0.0))
    x = draft.clamp(min=0)[:, None]
    passes = per_row(batch.accept_uniform, 0.0) * q.gather(-1, x)[:, 0] < batch.target.gather(-1, x)[:, 0]
    residual = torch.argmax(torch.clamp(batch.target - q, min=0.0) / batch.residual_noise, dim=-1)
    row_token = torch.where(sparse, torch.where(passes, draft, residual), own)
    row_accepted = torch.where(sparse, passes, is_draft & (own == draft))

    grid_accepted = torch.zeros(num_seqs, max_drafts + 1, dtype=torch.int64, device=device)
    grid_accepted[seq, index] = row_accepted.to(torch.int64)
    accepted = torch.cumprod(grid_accepted, dim=1).sum(dim=1)  # leading accepted drafts
    tokens = torch.full((num_seqs, max_drafts + 1), -1, dtype=torch.int64, device=device)
    tokens[seq, index] = row_token
    kept = torch.arange(max_drafts + 1, device=device)[None, :] <= accepted[:, None]
    return accepted, torch.where(kept, tokens, -1)


_BLOCK_V = 1024


def rejection_sample_triton(batch: RejectionBatch) -> tuple[torch.Tensor, torch.Tensor]:
    num_seqs, max_drafts = batch.draft_tokens.shape
    vocab = batch.target.shape[1]
    q_width = batch.q_ids.shape[2]
    device = batch.target.device
    accepted = torch.zeros(num_seqs, dtype=torch.int64, device=device)
    tokens = torch.full((num_seqs, max_drafts + 1), -1, dtype=torch.int64, device=device)
    if num_seqs == 0:
        return accepted, tokens
    _rejection_kernel[(num_seqs,)](
        batch.target.contiguous(), batch.target_noise.contiguous(), batch.residual_noise.contiguous(),
        batch.row_start, batch.num_drafts, batch.draft_tokens.contiguous(), batch.greedy.to(torch.int8),
        batch.q_ids.contiguous(), batch.q_probs.contiguous(), batch.q_count.contiguous(),
        batch.accept_uniform.contiguous(), accepted, tokens,
        vocab, max_drafts, q_width,
        BLOCK_V=min(_BLOCK_V, triton.next_power_of_2(vocab)), BLOCK_Q=max(2, triton.next_power_of_2(q_width)),
    )  # fmt: skip
    return accepted, tokens


if triton is not None:

    @triton.jit
    def _first_argmax(values_ptr, weights_ptr, q_ids_ptr, q_probs_ptr, q_count, vocab,
                      MODE: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_Q: tl.constexpr):  # fmt: skip
        """First index of the maximum over the vocab of
        MODE 0: values; MODE 1: values / weights; MODE 2: max(0, values - q) / weights."""
        best = tl.full((), -float("inf"), values_ptr.dtype.element_ty)  # the values' dtype: compiled code
        best_index = 0  # needs one type per variable, which the interpreter does not check
        for start in range(0, vocab, BLOCK_V):
            v = start + tl.arange(0, BLOCK_V)
            in_vocab = v < vocab
            x = tl.load(values_ptr + v, mask=in_vocab, other=0.0)
            if MODE == 2:
                j = tl.arange(0, BLOCK_Q)
                j_ok = j < q_count
                ids = tl.load(q_ids_ptr + j, mask=j_ok, other=-1)
                probs = tl.load(q_probs_ptr + j, mask=j_ok, other=0.0)
                q = tl.sum(tl.where(ids[None, :] == v[:, None], probs[None, :], 0.0), axis=1)
                x = tl.maximum(x - q, 0.0)
            if MODE >= 1:
                x = x / tl.load(weights_ptr + v, mask=in_vocab, other=1.0)
            x = tl.where(in_vocab, x, -float("inf"))
            chunk_best = tl.max(x, axis=0)
            chunk_index = tl.min(tl.where(x == chunk_best, v, vocab), axis=0)
            if chunk_best > best:  # strictly greater: an earlier chunk keeps its tie
                best = chunk_best
                best_index = chunk_index
        return best_index

    @triton.jit
    def _rejection_kernel(
        target_ptr, target_noise_ptr, residual_noise_ptr,
        row_start_ptr, num_drafts_ptr, draft_ptr, greedy_ptr,
        q_ids_ptr, q_probs_ptr, q_count_ptr, uniform_ptr, accepted_ptr, tokens_ptr,
        vocab, max_drafts, q_width,
        BLOCK_V: tl.constexpr, BLOCK_Q: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0)
        start = tl.load(row_start_ptr + b)
        k = tl.load(num_drafts_ptr + b)
        greedy = tl.load(greedy_ptr + b) != 0
        done = False
        accepted = 0
        for i in range(0, k + 1):
            if not done:
                row = (start + i).to(tl.int64) * vocab
                draft = tl.load(draft_ptr + b * max_drafts + i, mask=i < k, other=-1)
                q_base = (b * max_drafts + i) * q_width
                n = tl.load(q_count_ptr + b * max_drafts + i, mask=i < k, other=0)
                if greedy or i == k or n == 0:
                    if greedy:
                        y = _first_argmax(target_ptr + row, target_noise_ptr + row, q_ids_ptr, q_probs_ptr, 0, vocab,
                                          MODE=0, BLOCK_V=BLOCK_V, BLOCK_Q=BLOCK_Q)  # fmt: skip
                    else:
                        y = _first_argmax(target_ptr + row, target_noise_ptr + row, q_ids_ptr, q_probs_ptr, 0, vocab,
                                          MODE=1, BLOCK_V=BLOCK_V, BLOCK_Q=BLOCK_Q)  # fmt: skip
                    tl.store(tokens_ptr + b * (max_drafts + 1) + i, y)
                    if y == draft:
                        accepted += 1
                    else:
                        done = True
                else:
                    j = tl.arange(0, BLOCK_Q)
                    j_ok = j < n
                    ids = tl.load(q_ids_ptr + q_base + j, mask=j_ok, other=-1)
                    q_x = tl.sum(tl.where(ids == draft, tl.load(q_probs_ptr + q_base + j, mask=j_ok, other=0.0), 0.0))
                    p_x = tl.load(target_ptr + row + draft)
                    u = tl.load(uniform_ptr + b * max_drafts + i)
                    if u * q_x < p_x:
                        tl.store(tokens_ptr + b * (max_drafts + 1) + i, draft)
                        accepted += 1
                    else:
                        y = _first_argmax(target_ptr + row, residual_noise_ptr + row, q_ids_ptr + q_base,
                                          q_probs_ptr + q_base, n, vocab,
                                          MODE=2, BLOCK_V=BLOCK_V, BLOCK_Q=BLOCK_Q)  # fmt: skip
                        tl.store(tokens_ptr + b * (max_drafts + 1) + i, y)
                        done = True
        tl.store(accepted_ptr + b, accepted)
