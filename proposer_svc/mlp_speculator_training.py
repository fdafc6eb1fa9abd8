"""Training an MLP speculator on the target's own hidden states and tokens, saved in the published format.

An example is one position p of a text the target generated: the target's final hidden state h_p
(the one that produced token x_{p+1}) and the tokens x_{p+1} .. x_{p+1+n_predict}. Head i is fed
x_{p+1+i} (teacher forcing, as in IBM's recipe) and learns to predict x_{p+2+i}, which is exactly what
it is asked at serving time, where its input is the hidden state behind a sequence's last token.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from proposer_svc.mlp_speculator import MLPSpeculatorConfig, head_state, input_state, mixing_weights


@dataclass
class SpeculatorExamples:
    hidden: torch.Tensor
    """[N, emb_dim] float32: the target's final hidden state at position p."""
    tokens: torch.Tensor
    """[N, n_predict + 1] int64: x_{p+1} .. x_{p+1+n_predict}."""
    next_hidden: torch.Tensor
    """[N, n_predict, emb_dim] float32: the target's hidden states at p+1 .. p+n_predict, whose logits
    are the target's full distribution over the tokens the heads predict (distillation targets)."""

    def __len__(self) -> int:
        return len(self.tokens)

    @staticmethod
    def from_sequence(hidden: torch.Tensor, token_ids: list[int], first: int, n_predict: int) -> "SpeculatorExamples":
        """hidden [len(token_ids) - 1, emb]: row j is the state that produced token_ids[j + 1]. Positions
        from `first` on (where the target's own output starts) become examples."""
        last = len(token_ids) - 1 - n_predict  # the last p with n_predict + 1 tokens after it
        positions = range(max(first, 0), last)
        rows = torch.tensor(list(positions), dtype=torch.long)
        ids = torch.tensor(token_ids)
        offsets = torch.arange(n_predict + 1)
        hidden = hidden.float()
        return SpeculatorExamples(
            hidden[rows], ids[rows[:, None] + 1 + offsets], hidden[rows[:, None] + 1 + offsets[:-1]]
        )

    @staticmethod
    def concat(parts: list["SpeculatorExamples"]) -> "SpeculatorExamples":
        return SpeculatorExamples(*(torch.cat([getattr(p, f) for p in parts]) for f in ("hidden", "tokens", "next_hidden")))

    def rows(self, index: torch.Tensor | slice) -> "SpeculatorExamples":
        return SpeculatorExamples(self.hidden[index], self.tokens[index], self.next_hidden[index])


def _head_index(config: MLPSpeculatorConfig, kind: str, i: int) -> int:
    """Which stored tensor head i uses: its own, or with tie_weights the shared one (as the loader reads)."""
    if not config.tie_weights:
        return i
    return min(i, 1) if kind == "proj" else 0


class TrainableMLPSpeculator(torch.nn.Module):
    """The speculator's parameters under their published names (with "." as "_" for torch)."""

    def __init__(self, config: MLPSpeculatorConfig, embedding: torch.Tensor, head: torch.Tensor, seed: int = 0) -> None:
        """embedding, head: the target's input embedding and output head [vocab, emb_dim], which start
        every emb and head (the state lives in the target's hidden space when inner_dim == emb_dim)."""
        super().__init__()
        if config.inner_dim != config.emb_dim:
            raise ValueError("starting from the target's embedding needs inner_dim == emb_dim")
        self.config = config
        g = torch.Generator().manual_seed(seed)
        stored = {"emb": set(), "proj": set(), "ln": set(), "head": set()}
        for i in range(config.n_predict):
            for kind in stored:
                stored[kind].add(_head_index(config, kind, i))
        self.tensors = torch.nn.ParameterDict()
        for i in sorted(stored["emb"]):
            self.tensors[f"emb_{i}_weight"] = torch.nn.Parameter(embedding.clone().float())
        for i in sorted(stored["head"]):
            self.tensors[f"head_{i}_weight"] = torch.nn.Parameter(head.clone().float())
        for i in sorted(stored["proj"]):
            fan_in = config.emb_dim if i == 0 else config.inner_dim
            # near the identity, so the first head starts from the target's own state
            eye = torch.eye(config.inner_dim, fan_in)
            noise = torch.randn(config.inner_dim, fan_in, generator=g) * (0.1 / math.sqrt(fan_in))
            self.tensors[f"proj_{i}_weight"] = torch.nn.Parameter(eye + noise)
        for i in sorted(stored["ln"]):
            self.tensors[f"ln_{i}_weight"] = torch.nn.Parameter(torch.ones(config.inner_dim))
            self.tensors[f"ln_{i}_bias"] = torch.nn.Parameter(torch.zeros(config.inner_dim))
        self.register_buffer("target_head", head.clone().float())
        self.state_weight, self.emb_weight = mixing_weights(config.inner_dim, config.n_predict)

    def _param(self, kind: str, i: int, suffix: str = "weight") -> torch.Tensor:
        return self.tensors[f"{kind}_{_head_index(self.config, kind, i)}_{suffix}"]

    def losses(self, examples: SpeculatorExamples) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (cross-entropy per head against the target's own distribution [n_predict], top-1
        agreements with the target's token per head [n_predict])."""
        tokens = examples.tokens
        state = input_state(examples.hidden, self.config.scale_input)
        emb_scale = self.emb_weight / self.state_weight
        losses, correct = [], []
        for i in range(self.config.n_predict):
            embedded = F.embedding(tokens[:, i], self._param("emb", i))
            projected = state @ self._param("proj", i).t()
            state = head_state(projected, embedded, self._param("ln", i), self._param("ln", i, "bias"), emb_scale)
            logits = state @ self._param("head", i).t()
            with torch.no_grad():
                target = F.softmax(examples.next_hidden[:, i] @ self.target_head.t(), dim=-1)
            losses.append(F.cross_entropy(logits, target))
            correct.append((logits.argmax(-1) == tokens[:, i + 1]).sum())
        return torch.stack(losses), torch.stack(correct)

    def published_tensors(self) -> dict[str, torch.Tensor]:
        return {name.replace("_", "."): p.detach().contiguous() for name, p in self.tensors.items()}


@dataclass(frozen=True)
class TrainingSettings:
    epochs: int = 3
    batch_size: int = 128
    learning_rate: float = 1e-3
    head_learning_rate: float = 1e-4
    embedding_learning_rate: float = 0.0
    """0 keeps the target's input embedding as it is (and skips its gradient)."""
    seed: int = 0


@dataclass
class HeadAccuracy:
    loss: list[float]
    accuracy: list[float]
    """Top-1 agreement of head i with the target's token at p + 2 + i, teacher-forced."""


def evaluate(model: TrainableMLPSpeculator, examples: SpeculatorExamples, batch_size: int = 512) -> HeadAccuracy:
    n = model.config.n_predict
    loss_sum, correct = torch.zeros(n), torch.zeros(n)
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = examples.rows(slice(start, start + batch_size))
            losses, right = model.losses(batch)
            loss_sum += losses * len(batch)
            correct += right
    total = max(len(examples), 1)
    return HeadAccuracy((loss_sum / total).tolist(), (correct / total).tolist())


def train(
    model: TrainableMLPSpeculator,
    examples: SpeculatorExamples,
    settings: TrainingSettings,
    on_step: Callable[[int, int, float], None] | None = None,
) -> None:
    """Adam over shuffled mini-batches. The vocabulary-sized tables, started from the target's, have
    rates of their own; a table with rate 0 is frozen. on_step(step, total_steps, loss) reports progress."""
    rates = {"emb_": settings.embedding_learning_rate, "head_": settings.head_learning_rate}
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for name, p in model.tensors.items():
        rate = next((r for prefix, r in rates.items() if name.startswith(prefix)), settings.learning_rate)
        p.requires_grad_(rate > 0)
        if rate > 0:
            groups.setdefault(rate, []).append(p)
    optimizer = torch.optim.Adam([{"params": params, "lr": rate} for rate, params in groups.items()])
    steps_per_epoch = math.ceil(len(examples) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / max(total, 1))))
    g = torch.Generator().manual_seed(settings.seed)
    step = 0
    for _ in range(settings.epochs):
        order = torch.randperm(len(examples), generator=g)
        for start in range(0, len(examples), settings.batch_size):
            losses, _ = model.losses(examples.rows(order[start : start + settings.batch_size]))
            loss = losses.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if on_step is not None:
                on_step(step, total, loss.item() / model.config.n_predict)


def save_mlp_speculator(folder: Path, model: TrainableMLPSpeculator, dtype: torch.dtype = torch.float32) -> None:
    """config.json and model.safetensors as IBM publishes them (loadable by vLLM and by this project)."""
    folder.mkdir(parents=True, exist_ok=True)
    c = model.config
    config = {
        "architectures": ["MLPSpeculatorPreTrainedModel"],
        "model_type": "mlp_speculator",
        **asdict(c),
        "top_k_tokens_per_head": [1] * c.n_predict,
        "n_candidates": 1,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.to(dtype) for k, v in model.published_tensors().items()}, str(folder / "model.safetensors"))
