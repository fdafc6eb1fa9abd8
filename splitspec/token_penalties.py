"""Repetition, frequency and presence penalties, vLLM's (and OpenAI's for the last two).

Each verify row's logits are penalised by the tokens before the position it scores: the prompt and the
committed output, and then the draft tokens before that row. Row j of a pass over a draft therefore
gets exactly the penalties a plain decoding step would after committing the draft's first j tokens
(in a tree, the tokens on the path to the row's token), so speculation with penalties is plain
decoding with penalties, greedy and sampled: a draft the penalties make less likely is simply accepted
less often. Drafters need not know of them.

The order is vLLM's: the repetition penalty divides positive logits (multiplies negative ones) of every
token seen in the prompt or the output; then the frequency penalty is subtracted once per occurrence
in the output, and the presence penalty once for any occurrence in the output. They apply to the logits
before temperature, top-k and top-p, after the min_tokens ban (splitspec.token_ban); logprobs are
the raw logits', as vLLM's default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from splitspec import draft_tree
from splitspec.sampling_params import SamplingParams


@dataclass(frozen=True)
class TokenPenalties:
    presence: float
    frequency: float
    repetition: float
    prompt_length: int
    """Tokens below this position are the prompt: they count for the repetition penalty only. Absolute,
    so it survives a sequence resent whole to another verifier."""

    @staticmethod
    def for_request(params: SamplingParams, prompt_length: int) -> TokenPenalties | None:
        if not params.has_penalties:
            return None
        return TokenPenalties(
            params.presence_penalty, params.frequency_penalty, params.repetition_penalty, prompt_length
        )

    def apply(
        self, logits: torch.Tensor, tokens: list[int], draft_token_ids: list[int], parents: list[int] | None = None
    ) -> None:
        """logits [rows, vocab], row i scoring the position after tokens + draft_token_ids[:i] (with
        `parents`, a tree's: after the path to draft token i - 1): penalised in place."""
        rows, vocab = logits.shape
        device = logits.device
        output = torch.tensor(tokens[self.prompt_length :], dtype=torch.int64, device=device)
        counts = torch.bincount(output, minlength=vocab)[:vocab].to(logits.dtype).expand(rows, vocab).clone()
        n = min(len(draft_token_ids), rows - 1)
        if n:  # row i also counts the drafts on the path to it
            one_hot = torch.zeros(n, vocab, dtype=logits.dtype, device=device)
            one_hot[torch.arange(n, device=device), torch.tensor(draft_token_ids[:n], device=device)] = 1.0
            on_path = draft_tree.ancestors_mask(draft_tree.chain(n) if parents is None else parents[:n])
            counts[1 : n + 1] += on_path.to(device, logits.dtype) @ one_hot
        with torch.inference_mode():  # the runner's logits are inference tensors
            if self.repetition != 1.0:
                prompt = torch.tensor(tokens[: self.prompt_length], dtype=torch.int64, device=device)
                in_prompt = torch.bincount(prompt, minlength=vocab)[:vocab] > 0
                seen = (counts > 0) | in_prompt
                penalised = torch.where(logits > 0, logits / self.repetition, logits * self.repetition)
                logits.copy_(torch.where(seen, penalised, logits))
            if self.frequency != 0.0:
                logits -= self.frequency * counts
            if self.presence != 0.0:
                logits -= self.presence * (counts > 0).to(logits.dtype)
