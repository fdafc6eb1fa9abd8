"""Training an EAGLE-3 head on the target's own text with training-time test, saved in Red Hat's
speculators layout (docs/eagle3.md sections 1-4 and 6 describe the head and how it drafts).

A text x_0 .. x_n gives n rows: row j pairs the target's three aux states s_j (those of the position
that produced x_{j+1}) with the token x_{j+1}, at head position j. Drafting after the target commits
row j runs the head once over all rows (step 1, causal attention, g_j = fc(s_j)), then feeds back,
one row at a time, its own pre-norm output with the token just drafted (step k at position j + k - 1),
attending to step 1's keys up to j and to its own earlier steps.

Training-time test unrolls exactly that for every row at once: step k's queries are the rows, its
keys are step 1's (causal, as in the first pass) followed by steps 2 .. k's keys of the same row (the
diagonal), and its token is the true x_{j+k}. So the head learns from the states it will itself
produce, not from the target's, which is what lifts EAGLE-3's acceptance past the second draft.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from splitspec.models.rope import inverse_frequencies, rope_parameters
from splitspec_kernels.rotary import rotate_half

IGNORE = -100
"""A label outside the draft vocabulary, or past the end of the text: no loss."""


@dataclass(frozen=True)
class HeadShape:
    """The head's widths, all the target's but the draft vocabulary."""

    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    draft_vocab_size: int
    rms_norm_eps: float
    rope: dict[str, Any]
    """rope_parameters(target config): rope_type, rope_theta and the scaling keys."""

    @staticmethod
    def of_target(config: Any, draft_vocab_size: int) -> "HeadShape":
        """config: the target's transformers config."""
        return HeadShape(
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_heads=config.num_attention_heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
            vocab_size=config.vocab_size,
            draft_vocab_size=draft_vocab_size,
            rms_norm_eps=config.rms_norm_eps,
            rope=rope_parameters(config),
        )


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    def __init__(self, shape: HeadShape) -> None:
        super().__init__()
        h, hd = shape.hidden_size, shape.head_dim
        self.q_proj = nn.Linear(2 * h, shape.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(2 * h, shape.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(2 * h, shape.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(shape.num_heads * hd, h, bias=False)


class MLP(nn.Module):
    def __init__(self, shape: HeadShape) -> None:
        super().__init__()
        h, i = shape.hidden_size, shape.intermediate_size
        self.gate_proj = nn.Linear(h, i, bias=False)
        self.up_proj = nn.Linear(h, i, bias=False)
        self.down_proj = nn.Linear(i, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, shape: HeadShape) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.hidden_norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.self_attn = Attention(shape)
        self.mlp = MLP(shape)


@dataclass
class StepOutput:
    state: torch.Tensor
    """[rows, H] the layer's output before the final norm: what the next step is fed."""
    keys: torch.Tensor
    """[rows, kv_heads, head_dim] after RoPE."""
    values: torch.Tensor
    """[rows, kv_heads, head_dim]"""


class Eagle3Head(nn.Module):
    """One EAGLE-3 layer; its state_dict() is the speculators layout's tensors (embed_tokens frozen)."""

    def __init__(self, shape: HeadShape, draft_ids: torch.Tensor) -> None:
        """draft_ids [Vd] int64: the target ids of the draft vocabulary, ascending."""
        super().__init__()
        h = shape.hidden_size
        self.shape = shape
        self.embed_tokens = nn.Embedding(shape.vocab_size, h)
        self.embed_tokens.weight.requires_grad_(False)
        self.fc = nn.Linear(3 * h, h, bias=False)
        self.layers = nn.ModuleList([Layer(shape)])
        self.norm = RMSNorm(h, shape.rms_norm_eps)
        self.lm_head = nn.Linear(h, shape.draft_vocab_size, bias=False)
        d2t, t2d = draft_maps(draft_ids, shape.vocab_size)
        self.register_buffer("d2t", d2t)
        self.register_buffer("t2d", t2d)
        lookup = torch.full((shape.vocab_size,), IGNORE, dtype=torch.int64)
        lookup[draft_ids] = torch.arange(len(draft_ids))
        self.register_buffer("target_to_draft", lookup, persistent=False)
        inv_freq, self.rope_factor = inverse_frequencies(shape.rope, shape.head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("target_scores", torch.zeros(shape.draft_vocab_size, h), persistent=False)
        """The target's output head rows of the draft vocabulary (init_from_target), frozen: the
        distribution TrainingSettings.distill trains against is final state @ these."""

    def step(
        self,
        tokens: torch.Tensor,
        state: torch.Tensor,
        positions: torch.Tensor,
        past: list[StepOutput],
        mask: torch.Tensor,
    ) -> StepOutput:
        """tokens [R] target ids; state [R, H] (fc(aux) on step 1, the previous step's output after);
        positions [R]; past: earlier steps whose keys come first; mask [R, past rows + R] bool."""
        layer, attn, s = self.layers[0], self.layers[0].self_attn, self.shape
        rows = len(tokens)
        x = torch.cat([layer.input_layernorm(self.embed_tokens(tokens)), layer.hidden_norm(state)], -1)  # [R, 2H]
        angles = positions[:, None].float() * self.inv_freq  # [R, hd/2]
        cos = (torch.cat([angles, angles], -1).cos() * self.rope_factor)[:, None]  # [R, 1, hd]
        sin = (torch.cat([angles, angles], -1).sin() * self.rope_factor)[:, None]
        q = rotate_half(attn.q_proj(x).view(rows, s.num_heads, s.head_dim), cos, sin)
        k = rotate_half(attn.k_proj(x).view(rows, s.num_kv_heads, s.head_dim), cos, sin)
        v = attn.v_proj(x).view(rows, s.num_kv_heads, s.head_dim)
        keys = torch.cat([p.keys for p in past] + [k])  # [past rows + R, kv, hd]
        values = torch.cat([p.values for p in past] + [v])
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1), attn_mask=mask, enable_gqa=True
        )  # [heads, R, hd]
        x = state + attn.o_proj(out.transpose(0, 1).reshape(rows, -1))  # residual = g: norm_before_residual false
        x = x + layer.mlp(layer.post_attention_layernorm(x))
        return StepOutput(x, k, v)

    def logits(self, state: torch.Tensor) -> torch.Tensor:
        """state [R, H] pre-norm -> [R, Vd] over the draft vocabulary."""
        return self.lm_head(self.norm(state))

    def to_target(self, draft: torch.Tensor) -> torch.Tensor:
        return draft + self.d2t[draft]


def draft_maps(draft_ids: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """draft_ids [Vd] ascending target ids -> (d2t [Vd] int64 with target = draft + d2t[draft],
    t2d [vocab] bool: the target ids in the draft vocabulary)."""
    d2t = draft_ids.long() - torch.arange(len(draft_ids))
    t2d = torch.zeros(vocab_size, dtype=torch.bool)
    t2d[draft_ids] = True
    return d2t, t2d


def draft_vocabulary(outputs: list[list[int]], prompts: list[list[int]], vocab_size: int, size: int) -> torch.Tensor:
    """The `size` tokens the target writes most often ([size] int64 target ids, ascending). Every
    token of its outputs is in when they fit; what is left goes to the prompts' tokens, then low ids."""
    if size > vocab_size:
        raise ValueError(f"a draft vocabulary of {size} is larger than the target's {vocab_size}")
    written = Counter(t for o in outputs for t in o)
    read = Counter(t for p in prompts for t in p)
    ranked = sorted(range(vocab_size), key=lambda t: (-written[t], -read[t], t))
    return torch.tensor(sorted(ranked[:size]), dtype=torch.int64)


def ttt_mask(rows: torch.Tensor, num_rows: int, step: int) -> torch.Tensor:
    """[R, num_rows + (step - 1) * R] bool: what step `step` at rows [R] (ascending) attends to. The
    keys are step 1's at positions 0 .. num_rows - 1 (row j sees those <= j), then steps 2 .. step's
    keys of the same rows (row j sees only its own)."""
    causal = torch.arange(num_rows)[None] <= rows[:, None]
    diagonal = torch.eye(len(rows), dtype=torch.bool).repeat(1, step - 1)
    return torch.cat([causal, diagonal], 1)


def unroll(
    head: Eagle3Head, aux: torch.Tensor, ids: torch.Tensor, first: int, steps: int, drafted: bool = False
) -> list[torch.Tensor]:
    """aux [n, 3H]: row j is the state that produced ids[j + 1]; ids [n + 1] the text. -> for each
    step k = 1 .. steps, the logits [n - first, Vd] of rows first .. n - 1, whose label is
    ids[j + k + 1]. Step k >= 2 is fed ids[j + k] (teacher forcing) or, with `drafted`, the previous
    step's draft, which is how the head drafts when serving. Step 1 runs over every row (later steps
    attend to all of its keys); the rest only over the rows asked for."""
    n = len(ids) - 1
    every = torch.arange(n)
    rows = every[first:]
    fed = F.pad(ids, (0, steps))  # tokens past the end feed rows whose labels are IGNORE
    out = head.step(ids[1:], head.fc(aux), every, [], ttt_mask(every, n, 1))
    out = StepOutput(out.state[first:], out.keys, out.values)  # every key, the asked rows' states
    past = [out]
    logits = [head.logits(out.state)]
    for k in range(2, steps + 1):
        tokens = head.to_target(logits[-1].argmax(-1)) if drafted else fed[rows + k]
        out = head.step(tokens, out.state, rows + k - 1, past, ttt_mask(rows, n, k))
        past.append(out)
        logits.append(head.logits(out.state))
    return logits


def ttt_labels(head: Eagle3Head, ids: torch.Tensor, first: int, steps: int) -> torch.Tensor:
    """[steps, n - first] draft ids of ids[j + k + 1] for rows j = first .. n - 1; IGNORE where the
    text ends or the token is outside the draft vocabulary."""
    n = len(ids) - 1
    rows = torch.arange(first, n)
    padded = F.pad(head.target_to_draft[ids], (0, steps + 1), value=IGNORE)
    return torch.stack([padded[rows + k + 1] for k in range(1, steps + 1)])


@dataclass
class Text:
    """One training or held-out text with the target's aux states."""

    aux: torch.Tensor
    """[len(ids) - 1, 3H] float32"""
    ids: torch.Tensor
    """[n + 1] int64: prompt then the target's output."""
    first: int
    """len(prompt) - 1: the first row whose token the target wrote."""
    final: torch.Tensor | None = None
    """[len(ids) - 1, H] the target's final (normed) states, for init_by_least_squares."""


@dataclass(frozen=True)
class TrainingSettings:
    steps: int = 4
    """TTT steps: the drafts per round the head is trained for (speculative_tokens)."""
    epochs: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.0
    texts_per_update: int = 1
    step_decay: float = 0.8
    """Step k's loss weighs step_decay ** (k - 1), as in EAGLE-3."""
    seed: int = 0
    distill: bool = False
    """Train against the target's own distribution over the draft vocabulary at each position (the
    cross-entropy to its softmax, as the speculators library trains against the verifier's logits),
    not the one token it wrote, and on the prompt's rows too: more signal per position, so less
    overfitting on the few texts a CPU run generates. Needs the texts' final states and
    Eagle3Head.target_scores."""
    bf16: bool = field(default_factory=lambda: torch.cpu._is_avx512_bf16_supported())
    """Matmuls in bfloat16 (autocast; weights and AdamW stay float32): about 3 times faster where the CPU
    has bfloat16 instructions, slower where it would emulate them."""


def ttt_loss(head: Eagle3Head, text: Text, settings: TrainingSettings) -> torch.Tensor:
    """The weighted sum over steps of the cross-entropy summed over the text's labelled rows."""
    if settings.distill:
        return _distilled_loss(head, text, settings)
    logits = unroll(head, text.aux, text.ids, text.first, settings.steps)
    labels = ttt_labels(head, text.ids, text.first, settings.steps)
    return sum(
        settings.step_decay**k * F.cross_entropy(step, label, ignore_index=IGNORE, reduction="sum")
        for k, (step, label) in enumerate(zip(logits, labels))
    )


def _distilled_loss(head: Eagle3Head, text: Text, settings: TrainingSettings) -> torch.Tensor:
    """Step k at row j against the target's distribution at position j + k (what it scores for the
    token after ids[j + k]), over every row of the text, the prompt's included."""
    logits = unroll(head, text.aux, text.ids, 0, settings.steps)
    n = len(text.ids) - 1
    total = torch.zeros(())
    for k, step in enumerate(logits, start=1):
        rows = torch.arange(n - k)  # the target's state at j + k exists
        with torch.no_grad():
            target = torch.softmax(text.final[rows + k] @ head.target_scores.T, -1)
        total = total + settings.step_decay ** (k - 1) * -(target * torch.log_softmax(step[rows].float(), -1)).sum()
    return total


def _labelled_rows(head: Eagle3Head, text: Text, settings: TrainingSettings) -> int:
    """The rows with a step-1 label."""
    if settings.distill:
        return len(text.ids) - 2
    return int((ttt_labels(head, text.ids, text.first, 1)[0] != IGNORE).sum())


def train(
    head: Eagle3Head, texts: list[Text], settings: TrainingSettings, progress: Callable[[float], None]
) -> list[float]:
    """AdamW over the texts, `texts_per_update` per update, lr warmed up then decayed to zero on a
    cosine. progress(its loss per label) after each text. -> the mean loss per label of each epoch."""
    params = [p for p in head.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    updates = settings.epochs * math.ceil(len(texts) / settings.texts_per_update)
    warmup = max(updates // 20, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda u: min((u + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(u / updates, 1))))
    )
    rng = random.Random(settings.seed)
    losses = []
    for _ in range(settings.epochs):
        order = rng.sample(texts, len(texts))
        total, labelled = 0.0, 0
        for start in range(0, len(order), settings.texts_per_update):
            batch = order[start : start + settings.texts_per_update]
            counts = [_labelled_rows(head, t, settings) for t in batch]
            count = max(sum(counts), 1)  # the update's loss is a mean per label
            for text, labels in zip(batch, counts):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16):
                    loss = ttt_loss(head, text, settings)
                (loss / count).backward()
                total += loss.item()
                progress(loss.item() / max(labels, 1))
            labelled += count
            nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            optimiser.zero_grad(set_to_none=True)
            schedule.step()
        losses.append(total / max(labelled, 1))
    return losses


@torch.no_grad()
def held_out_drafts(head: Eagle3Head, text: Text, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(drafts, truths) [rows, steps] target ids: the head's greedy chain after each row from
    text.first on that has `steps` tokens after it, and what the target wrote there."""
    logits = unroll(head, text.aux, text.ids, text.first, steps, drafted=True)
    last = len(text.ids) - 1 - steps  # rows j < last have ids[j + steps + 1]
    rows = torch.arange(text.first, max(last, text.first))
    drafts = torch.stack([head.to_target(step.argmax(-1)) for step in logits], 1)[: len(rows)]
    truths = text.ids[rows[:, None] + torch.arange(2, steps + 2)]
    return drafts, truths


def expected_tokens_per_pass(acceptance: list[float]) -> float:
    """acceptance: the chain acceptance per position (given the earlier ones accepted) -> 1 + the
    expected number of drafts accepted per target pass."""
    return 1 + sum(math.prod(acceptance[: i + 1]) for i in range(len(acceptance)))


def read_target_tensors(path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """The named tensors of a safetensors checkpoint as float32 (only those are read)."""
    found: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            found.update({n: f.get_tensor(n).float() for n in names if n in f.keys()})
    missing = set(names) - set(found)
    if missing:
        raise ValueError(f"{path} lacks {sorted(missing)}")
    return found


def init_from_target(head: Eagle3Head, embedding: torch.Tensor, lm_head: torch.Tensor, final_norm: torch.Tensor):
    """The embedding is the target's (frozen, as the runner shares it); the output head starts as the
    target's rows of the draft vocabulary and its final norm as the target's, so the head's state starts
    in the space the target's head reads. fc and the layer start small and random (std 0.02, HF's init)."""
    draft_ids = head.to_target(torch.arange(head.shape.draft_vocab_size))
    with torch.no_grad():
        head.embed_tokens.weight.copy_(embedding)
        head.lm_head.weight.copy_(lm_head[draft_ids])
        head.target_scores.copy_(lm_head[draft_ids])
        head.norm.weight.copy_(final_norm)
        for module in [head.fc, *head.layers[0].self_attn.children(), *head.layers[0].mlp.children()]:
            nn.init.normal_(module.weight, std=0.02)


def _rms_normed(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


@torch.no_grad()
def init_by_least_squares(
    head: Eagle3Head, texts: list[Text], ridge: float = 1e-3, attention_scale: float = 5.0, max_span: int = 512
) -> None:
    """Start the head as a linear drafter about as good as the MLP speculator's first head, so that
    training-time test refines a head that drafts rather than fitting one from random weights (which
    overfits the tens of thousands of positions a CPU run can generate before it drafts as well).

    1. Ridge least squares [s_j, e(x_{j+1})] -> f_{j+1} over the texts' rows: the target's aux states and
       the RMS-normed embedding of the token fed, to the target's final state at the next position, whose
       scores through the target's own head (init_from_target) rank the token after next. The states'
       part A becomes fc.
    2. The embedding's part B = L S R^T (SVD) is carried by attention: in each KV group, q and k project
       the embedding on its leading whitened directions, placed on the rotary pairs that turn less than
       half a radian over `max_span` positions, so a row attends to the occurrences of its own token; v =
       e L_g and o = S_g R_g^T over the group's share of the singular directions. The residual after
       attention is then about fc(s) + e B.
    3. The MLP starts small (down_proj scaled by 0.1), the norms at 1, the final norm's weight at the
       typical RMS of f."""
    s = head.shape
    h, hd = s.hidden_size, s.head_dim
    embedding = head.embed_tokens.weight
    inputs, outputs = [], []
    for text in texts:
        rows = torch.arange(text.first, len(text.ids) - 2)
        inputs.append(torch.cat([text.aux[rows], _rms_normed(embedding[text.ids[rows + 1]])], -1))
        outputs.append(text.final[rows + 1])
    x, y = torch.cat(inputs).double(), torch.cat(outputs).double()
    gram = x.T @ x
    regulariser = ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=torch.float64)
    weights = torch.linalg.solve(gram + regulariser, x.T @ y).float()
    from_states, from_embedding = weights[: 3 * h], weights[3 * h :]
    left, singular, right = torch.linalg.svd(from_embedding, full_matrices=False)

    draft_embedding = _rms_normed(embedding[head.to_target(torch.arange(s.draft_vocab_size))])
    _, spread, directions = torch.linalg.svd(draft_embedding, full_matrices=False)
    slow = (head.inv_freq * max_span < 0.5).nonzero().flatten()
    dims = torch.cat([slow, slow + hd // 2])
    whitened = directions.T[:, : len(dims)] * (math.sqrt(len(draft_embedding)) / spread[: len(dims)])  # [H, m]
    layer = head.layers[0]
    attn = layer.self_attn
    group = s.num_heads // s.num_kv_heads
    scale = math.sqrt(attention_scale)
    head.fc.weight.copy_(from_states.T)
    head.norm.weight.fill_(y.float().pow(2).mean(-1).sqrt().median().item())
    for norm in (layer.input_layernorm, layer.hidden_norm, layer.post_attention_layernorm):
        norm.weight.fill_(1.0)
    for g in range(min(3, s.num_kv_heads)):
        lead = g * group  # the group's first query head carries it
        share = slice(g * hd, (g + 1) * hd)
        attn.q_proj.weight[lead * hd : (lead + 1) * hd].zero_()
        attn.q_proj.weight[lead * hd + dims, :h] = scale * whitened.T
        attn.k_proj.weight[g * hd : (g + 1) * hd].zero_()
        attn.k_proj.weight[g * hd + dims, :h] = scale * whitened.T
        attn.v_proj.weight[g * hd : (g + 1) * hd].zero_()
        attn.v_proj.weight[g * hd : (g + 1) * hd, :h] = left[:, share].T
        attn.o_proj.weight[:, lead * hd : (lead + 1) * hd] = (singular[share, None] * right[share]).T
    layer.mlp.down_proj.weight.mul_(0.1)


def eagle3_config(
    target_config: Any, shape: HeadShape, aux_layers: tuple[int, ...], verifier: str, steps: int, dtype: str
) -> dict[str, Any]:
    """config.json in the speculators layout (Eagle3Speculator)."""
    rope = shape.rope
    layer = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_heads,
        "head_dim": shape.head_dim,
        "num_hidden_layers": 1,
        "rms_norm_eps": shape.rms_norm_eps,
        "rope_theta": rope["rope_theta"],
        "rope_scaling": None
        if rope["rope_type"] == "default"
        else {k: v for k, v in rope.items() if k != "rope_theta"},
        "max_position_embeddings": target_config.max_position_embeddings,
        "vocab_size": shape.vocab_size,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
    }
    return {
        "architectures": ["Eagle3Speculator"],
        "speculators_model_type": "eagle3",
        "draft_vocab_size": shape.draft_vocab_size,
        "norm_before_residual": False,
        "target_hidden_size": shape.hidden_size,
        "eagle_aux_hidden_state_layer_ids": list(aux_layers),
        "transformer_layer_config": layer,
        "speculators_config": {
            "algorithm": "eagle3",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": steps}],
            "default_proposal_method": "greedy",
            "verifier": {"name_or_path": verifier, "architectures": ["LlamaForCausalLM"]},
        },
        "speculators_version": "0.1.0",
    }


def save_eagle3(folder: Path, head: Eagle3Head, config: dict[str, Any]) -> None:
    """config.json and model.safetensors (float32; d2t int64, t2d bool)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(
        {name: t.detach().contiguous() for name, t in head.state_dict().items()}, str(folder / "model.safetensors")
    )
