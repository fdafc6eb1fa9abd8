"""IBM's MLP speculator ("accelerator" checkpoints, arXiv 2404.19124), read in its published format.

A checkpoint is a folder with config.json (model_type "mlp_speculator": emb_dim, inner_dim (0 means
emb_dim), vocab_size, n_predict, tie_weights, scale_input) and safetensors holding, per head i,
emb.{i}.weight [vocab, inner], proj.{i}.weight [inner, emb_dim for i = 0 else inner],
ln.{i}.weight and ln.{i}.bias [inner], head.{i}.weight [vocab, inner]; names may carry a
"speculator." prefix. With tie_weights every head shares emb.0, ln.0 and head.0, and heads after the
first share proj.1.

Head i turns the state s (at first the target's last hidden state h, RMS-normalised and divided by
sqrt(2) when scale_input) and the previous token t into
    s' = GELU(ln_i(proj_i(s) + (emb_weight / state_weight) * emb_i(t)))
and scores the next token with head_i(s'); s' and the chosen token feed head i + 1. Here
state_weight = 0.5 ** (0.5 / n_predict), emb_weight = sqrt((1 - state_weight^2) * inner / 2), and
ln_i(x) = x / sqrt(mean(x^2) + 1e-6) * weight + bias.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from proposer_svc.proposer import Proposer
from proposer_svc.tree_expansion import TreeExpansion
from splitspec.draft_tree import ROOT
from splitspec.drafts import Draft, DraftRequest, HiddenStates
from splitspec.errors import SplitspecError
from splitspec.models.linear import Linear

_EPS = 1e-6


@dataclass(frozen=True)
class MLPSpeculatorConfig:
    emb_dim: int
    inner_dim: int
    vocab_size: int
    n_predict: int
    tie_weights: bool = False
    scale_input: bool = False

    @staticmethod
    def read(path: Path) -> "MLPSpeculatorConfig":
        data = json.loads((path / "config.json").read_text())
        try:
            return MLPSpeculatorConfig(
                emb_dim=int(data["emb_dim"]),
                inner_dim=int(data.get("inner_dim") or data["emb_dim"]),
                vocab_size=int(data["vocab_size"]),
                n_predict=int(data["n_predict"]),
                tie_weights=bool(data.get("tie_weights", False)),
                scale_input=bool(data.get("scale_input", False)),
            )
        except KeyError as exc:
            raise SplitspecError(f"{path / 'config.json'} lacks {exc.args[0]!r}; is it an MLP speculator?") from None


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + _EPS)


def mixing_weights(inner_dim: int, n_predict: int) -> tuple[float, float]:
    """(state_weight, emb_weight) of the head recurrence, fixed by the architecture (the fit in
    mlp_speculator_training.py scales its embedding tables by them)."""
    state_weight = 0.5 ** (0.5 / n_predict)
    return state_weight, math.sqrt((1 - state_weight**2) * (inner_dim / 2))


class MLPSpeculator:
    def __init__(self, path: Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.config = c = MLPSpeculatorConfig.read(path)
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise SplitspecError(f"{path} has no *.safetensors weights")
        weights: dict[str, torch.Tensor] = {}
        for f in files:
            for name, tensor in load_file(str(f)).items():
                weights[name.removeprefix("speculator.")] = tensor.to(device, dtype)

        def take(name: str, shape: tuple[int, ...]) -> torch.Tensor:
            if name not in weights:
                raise SplitspecError(f"MLP speculator checkpoint {path} is missing {name!r}")
            if tuple(weights[name].shape) != shape:
                raise SplitspecError(f"{name} in {path} has shape {tuple(weights[name].shape)}, expected {shape}")
            return weights[name]

        def head_index(kind: str, i: int) -> int:
            if not c.tie_weights:
                return i
            return min(i, 1) if kind == "proj" else 0

        self.emb, self.proj, self.ln_weight, self.ln_bias, self.head = [], [], [], [], []
        for i in range(c.n_predict):
            e, p, h = head_index("emb", i), head_index("proj", i), head_index("head", i)
            self.emb.append(take(f"emb.{e}.weight", (c.vocab_size, c.inner_dim)))
            self.proj.append(take(f"proj.{p}.weight", (c.inner_dim, c.emb_dim if p == 0 else c.inner_dim)))
            self.ln_weight.append(take(f"ln.{e}.weight", (c.inner_dim,)))
            self.ln_bias.append(take(f"ln.{e}.bias", (c.inner_dim,)))
            self.head.append(take(f"head.{h}.weight", (c.vocab_size, c.inner_dim)))
        self.state_weight, self.emb_weight = mixing_weights(c.inner_dim, c.n_predict)
        packed: dict[int, Linear] = {}  # tied heads share one packed copy of each weight
        self.proj_linear = [packed.setdefault(id(w), Linear(w)) for w in self.proj]
        self.head_linear = [packed.setdefault(id(w), Linear(w)) for w in self.head]

    @property
    def n_predict(self) -> int:
        return self.config.n_predict

    def greedy_drafts(self, hidden: torch.Tensor, last_tokens: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """hidden [batch, emb_dim]: the target's final (normed) hidden state that produced each
        sequence's last token; last_tokens [batch]. Returns [batch, num_tokens] argmax drafts."""
        return self.run_heads(hidden, last_tokens, num_tokens)[0]

    @torch.inference_mode()
    def run_heads(
        self, hidden: torch.Tensor, last_tokens: torch.Tensor, num_tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (argmax tokens [batch, num_tokens], logits [batch, num_tokens, vocab]); each head is fed
        the previous head's argmax token."""
        if num_tokens > self.n_predict:
            raise ValueError(f"the speculator predicts at most {self.n_predict} tokens, {num_tokens} asked")
        state = self.input_state(hidden)
        tokens = last_tokens.to(state.device)
        drafts, logits = [], []
        for i in range(num_tokens):
            state, head_logits = self.head_step(i, state, tokens)
            logits.append(head_logits)
            tokens = torch.argmax(logits[-1], dim=-1)
            drafts.append(tokens)
        if not drafts:
            return last_tokens.new_zeros(len(last_tokens), 0), state.new_zeros(
                len(last_tokens), 0, self.config.vocab_size
            )
        return torch.stack(drafts, dim=1), torch.stack(logits, dim=1)

    def input_state(self, hidden: torch.Tensor) -> torch.Tensor:
        """The first head's input state from the target's hidden states [batch, emb_dim]."""
        state = hidden.to(self.proj[0].device, self.proj[0].dtype)
        return _rms(state) / math.sqrt(2) if self.config.scale_input else state

    @torch.inference_mode()
    def head_step(self, i: int, state: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Head i on [batch] states and the tokens before them: (its state for head i + 1, its logits)."""
        emb_scale = self.emb_weight / self.state_weight
        state = self.proj_linear[i](state) + emb_scale * F.embedding(tokens.to(state.device), self.emb[i])
        state = F.gelu(_rms(state) * self.ln_weight[i] + self.ln_bias[i])
        return state, self.head_linear[i](state)


class MLPSpeculatorProposer(Proposer):
    """Argmax drafts from the speculator's heads (one-hot q, so sampled requests stay exact). A
    sequence without the target's hidden state gets no drafts rather than drafts from garbage.

    With tree_width > 1 the heads draft EAGLE-2's dynamic tree (proposer_svc.tree_expansion), at most
    n_predict deep: head d scores the children of every node of depth d being expanded at once (all
    the batch's trees grow level by level together), fed the state head d - 1 computed for the node's
    parent and the node's own token."""

    method = "mlp_speculator"
    hidden_states = HiddenStates.LAST

    def __init__(self, speculator: MLPSpeculator) -> None:
        self.speculator = speculator

    def propose(self, requests: list[DraftRequest]) -> list[Draft]:
        drafts = [Draft() for _ in requests]
        ready = [i for i, r in enumerate(requests) if r.hidden_state is not None and r.num_tokens > 0 and r.token_ids]
        if not ready:
            return drafts
        trees = [i for i in ready if requests[i].tree_width > 1]
        for i, draft in zip(trees, self._trees([requests[i] for i in trees])):
            drafts[i] = draft
        chains = [i for i in ready if requests[i].tree_width <= 1]
        if not chains:
            return drafts
        n = min(self.speculator.n_predict, max(requests[i].num_tokens for i in chains))
        hidden = torch.stack([requests[i].hidden_state for i in chains])
        last = torch.tensor([requests[i].token_ids[-1] for i in chains])
        tokens = self.speculator.greedy_drafts(hidden, last, n).tolist()
        for i, row in zip(chains, tokens):
            k = min(requests[i].num_tokens, n)
            drafts[i] = Draft(row[:k], [None] * k)
        return drafts

    def _trees(self, requests: list[DraftRequest]) -> list[Draft]:
        if not requests:
            return []
        trees = [TreeExpansion(r.num_tokens, r.tree_width, self.speculator.n_predict) for r in requests]
        root_states = self.speculator.input_state(torch.stack([r.hidden_state for r in requests]))
        last = torch.tensor([r.token_ids[-1] for r in requests])
        states, logits = self.speculator.head_step(0, root_states, last)
        for tree, row in zip(trees, logits):
            tree.expand(ROOT, torch.softmax(row.float().cpu(), -1))
        # the state each expanded node leaves for its children's head: the root's for depth-1 nodes
        left: list[dict[int, torch.Tensor]] = [{ROOT: state} for state in states]
        for depth in range(1, self.speculator.n_predict):
            frontiers = [tree.frontier() for tree in trees]
            expanding = [(t, node) for t, frontier in enumerate(frontiers) for node in frontier]
            if not expanding:
                break
            parent_states = torch.stack([left[t][trees[t].nodes[node].parent] for t, node in expanding])
            tokens = torch.tensor([trees[t].nodes[node].token for t, node in expanding])
            states, logits = self.speculator.head_step(depth, parent_states, tokens)
            for (t, node), state, row in zip(expanding, states, logits):
                left[t][node] = state
                trees[t].expand(node, torch.softmax(row.float().cpu(), -1))
        return [tree.draft() for tree in trees]

    def release(self, seq_id: str) -> None:
        """Nothing per sequence: the hidden state comes with each request."""
