"""Fitting an MLP speculator to the target's own hidden states, saved in IBM's published format.

An example is one position p of a text the target read or wrote: its final hidden state h_p (the one
that produced token x_{p+1}), the tokens x_{p+1} .. x_{p+1+n_predict}, and its next hidden states
h_{p+1} .. h_{p+n_predict}. The target scores x_{p+2} with its head on h_{p+1}, so a head that
predicts h_{p+1} from (h_p, x_{p+1}) drafts what the target would write.

The fit is linear least squares in closed form, written exactly into the architecture's weights:
- the predicted state lives in the top emb_dim / 2 principal directions P of the target's states;
- the speculator's state carries it twice, as [u, -u]; since GELU(u) - GELU(-u) = u exactly, the
  next projection and the output head, which read the difference of the halves, see u itself;
- the layer norm (weight 1, bias 0) only rescales, which no argmax sees.
So head 0 computes u = A0 h_p + B embed(x_{p+1}) + b, heads after it u' = A1 rms(u) + B embed(t) + b
(one A1 and one B for all, as tie_weights shares them), and every head scores tokens with the
target's head on P u. The fit takes seconds on a CPU; IBM trains these heads by SGD instead.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from proposer_svc.mlp_speculator import MLPSpeculatorConfig, mixing_weights


@dataclass
class SpeculatorExamples:
    hidden: torch.Tensor
    """[N, emb_dim] float32: the target's final hidden state at position p."""
    tokens: torch.Tensor
    """[N, n_predict + 1] int64: x_{p+1} .. x_{p+1+n_predict}."""
    next_hidden: torch.Tensor
    """[N, n_predict, emb_dim] float32: the target's final hidden states at p+1 .. p+n_predict."""

    def __len__(self) -> int:
        return len(self.tokens)

    @staticmethod
    def from_sequence(hidden: torch.Tensor, token_ids: list[int], first: int, n_predict: int) -> "SpeculatorExamples":
        """hidden [len(token_ids) - 1, emb]: row j is the state that produced token_ids[j + 1].
        Positions from `first` on become examples."""
        last = len(token_ids) - 1 - n_predict  # the last p with n_predict + 1 tokens after it
        start = max(first, 0)
        rows = torch.arange(start, max(last, start))
        ids = torch.tensor(token_ids)
        offsets = torch.arange(n_predict + 1)
        hidden = hidden.float()
        return SpeculatorExamples(
            hidden[rows], ids[rows[:, None] + 1 + offsets], hidden[rows[:, None] + 1 + offsets[:-1]]
        )

    @staticmethod
    def concat(parts: list["SpeculatorExamples"]) -> "SpeculatorExamples":
        return SpeculatorExamples(
            *(torch.cat([getattr(p, f) for p in parts]) for f in ("hidden", "tokens", "next_hidden"))
        )


def _rms_normalise(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def fit_mlp_speculator(
    examples: SpeculatorExamples,
    embedding: torch.Tensor,
    head: torch.Tensor,
    n_predict: int,
    ridge: float = 1e-3,
    chunk: int = 4096,
) -> tuple[MLPSpeculatorConfig, dict[str, torch.Tensor]]:
    """embedding, head: the target's input embedding and output head [vocab, emb_dim]. ridge: the
    L2 penalty per example. -> a tied speculator's config and tensors under their published names."""
    vocab, dim = head.shape
    rank = dim // 2
    if n_predict < 1 or n_predict > examples.next_hidden.shape[1]:
        raise ValueError(f"the examples cover at most {examples.next_hidden.shape[1]} heads, {n_predict} asked")

    covariance = torch.zeros(dim, dim, dtype=torch.float64)
    for start in range(0, len(examples), chunk):
        states = examples.next_hidden[start : start + chunk, :n_predict].reshape(-1, dim).double()
        covariance += states.T @ states
    basis = torch.linalg.eigh(covariance).eigenvectors[:, -rank:]  # [dim, rank]: the top principal directions

    features = dim + rank + dim + 1  # [h_p for head 0 | rms(u) for later heads | embed(token) | 1]
    gram = torch.zeros(features, features, dtype=torch.float64)
    moment = torch.zeros(features, rank, dtype=torch.float64)
    for start in range(0, len(examples), chunk):
        hidden = examples.hidden[start : start + chunk].double()
        tokens = examples.tokens[start : start + chunk]
        following = examples.next_hidden[start : start + chunk].double() @ basis  # [n, heads, rank]
        for i in range(n_predict):
            x = torch.zeros(len(hidden), features, dtype=torch.float64)
            if i == 0:
                x[:, :dim] = hidden
            else:  # teacher forcing: the true state before, in the form the chain carries it
                x[:, dim : dim + rank] = _rms_normalise(following[:, i - 1])
            x[:, dim + rank : -1] = embedding[tokens[:, i]].double()
            x[:, -1] = 1
            gram += x.T @ x
            moment += x.T @ following[:, i]
    gram += ridge * len(examples) * n_predict * torch.eye(features, dtype=torch.float64)
    weights = torch.linalg.solve(gram, moment).T  # [rank, features]
    a0, a1, b_tok, bias = weights[:, :dim], weights[:, dim : dim + rank], weights[:, dim + rank : -1], weights[:, -1]

    config = MLPSpeculatorConfig(
        emb_dim=dim, inner_dim=dim, vocab_size=vocab, n_predict=n_predict, tie_weights=True, scale_input=False
    )
    state_weight, emb_weight = mixing_weights(dim, n_predict)
    token_term = embedding.double() @ b_tok.T + bias  # [vocab, rank]
    scored = head.double() @ basis  # [vocab, rank]
    tensors = {
        "emb.0.weight": torch.cat([token_term, -token_term], 1) * (state_weight / emb_weight),
        "proj.0.weight": torch.cat([a0, -a0]),
        "ln.0.weight": torch.ones(dim, dtype=torch.float64),
        "ln.0.bias": torch.zeros(dim, dtype=torch.float64),
        "head.0.weight": torch.cat([scored, -scored], 1) / 2,
    }
    if n_predict > 1:
        tensors["proj.1.weight"] = torch.cat([torch.cat([a1, -a1], 1), torch.cat([-a1, a1], 1)])
    return config, {name: t.float().contiguous() for name, t in tensors.items()}


def save_mlp_speculator(folder: Path, config: MLPSpeculatorConfig, tensors: dict[str, torch.Tensor]) -> None:
    """config.json and model.safetensors as IBM publishes them (what vLLM and this project load)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "architectures": ["MLPSpeculatorPreTrainedModel"],
        "model_type": "mlp_speculator",
        **asdict(config),
        "top_k_tokens_per_head": [1] * config.n_predict,
        "n_candidates": 1,
    }
    (folder / "config.json").write_text(json.dumps(data, indent=2) + "\n")
    save_file(tensors, str(folder / "model.safetensors"))


def chain_agreement(drafts: torch.Tensor, tokens: torch.Tensor) -> list[float]:
    """drafts, tokens [N, heads]: for head i, the share of examples whose drafts 0..i all equal the
    target's tokens among those whose drafts 0..i-1 do (the acceptance rate at draft position i)."""
    alive = torch.ones(len(drafts), dtype=torch.bool)
    rates = []
    for i in range(drafts.shape[1]):
        hit = alive & (drafts[:, i] == tokens[:, i])
        rates.append(hit.sum().item() / max(alive.sum().item(), 1))
        alive = hit
    return rates
