"""EAGLE-3 heads for tests: written in either published layout, an independent float64 reference of
the published formula, and heads fitted to a tiny target's text so that its verifier accepts drafts.

Layouts, as docs/eagle3.md reads them from EAGLE's and speculators' code:
- "eagle" (yuhuili/EAGLE3-LLaMA3.1-Instruct-8B): a flat Llama config, architectures
  ["LlamaForCausalLMEagle3"], draft_vocab_size, target_hidden_size; pytorch_model.bin in float16 with
  midlayer.* tensors and no embedding.
- "speculators" (RedHatAI/*-speculator.eagle3): speculators_model_type "eagle3", the layer's config
  under transformer_layer_config, norm_before_residual, eagle_aux_hidden_state_layer_ids and
  speculators_config; model.safetensors in bfloat16 with layers.0.* and the target's embedding.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from splitspec.checkpoint import read_embedding_and_head, read_tensors
from splitspec.models.runner import ForwardInput

HEAD_SHAPE = dict(num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0)


def head_tensors(hidden: int, target_hidden: int, draft_vocab: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    """Random weights under EAGLE's names (midlayer.*), d2t mapping draft id i to target id 2 i + 1
    for the first half and to the even ids after (every draft id lands inside the target's vocabulary)."""
    g = torch.Generator().manual_seed(seed)
    heads, kv_heads = HEAD_SHAPE["num_attention_heads"], HEAD_SHAPE["num_key_value_heads"]
    head_dim, inner = hidden // heads, 2 * hidden

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) / math.sqrt(shape[-1])

    def norm() -> torch.Tensor:
        return 1 + 0.2 * torch.randn(hidden, generator=g)

    targets = torch.cat([torch.arange(1, vocab, 2), torch.arange(0, vocab, 2)])[:draft_vocab]
    p = "midlayer."
    return {
        "fc.weight": rand(hidden, 3 * target_hidden),
        p + "input_layernorm.weight": norm(),
        p + "hidden_norm.weight": norm(),
        p + "post_attention_layernorm.weight": norm(),
        p + "self_attn.q_proj.weight": rand(heads * head_dim, 2 * hidden),
        p + "self_attn.k_proj.weight": rand(kv_heads * head_dim, 2 * hidden),
        p + "self_attn.v_proj.weight": rand(kv_heads * head_dim, 2 * hidden),
        p + "self_attn.o_proj.weight": rand(hidden, heads * head_dim),
        p + "mlp.gate_proj.weight": rand(inner, hidden),
        p + "mlp.up_proj.weight": rand(inner, hidden),
        p + "mlp.down_proj.weight": rand(hidden, inner),
        "norm.weight": norm(),
        "lm_head.weight": rand(draft_vocab, hidden),
        "d2t": targets - torch.arange(draft_vocab),
        "t2d": torch.isin(torch.arange(vocab), targets),
    }


def write_eagle3(
    folder: Path,
    target: Path,
    *,
    layout: str,
    tensors: dict[str, torch.Tensor] | None = None,
    aux_layers: list[int] | None = None,
    norm_before_residual: bool | None = False,
    speculative_tokens: int = 3,
    seed: int = 0,
) -> Path:
    """A head for `target` in one layout; tensors under EAGLE's names (head_tensors' by default)."""
    target_config = json.loads((target / "config.json").read_text())
    hidden, vocab = target_config["hidden_size"], target_config["vocab_size"]
    tensors = tensors or head_tensors(hidden, hidden, vocab // 2, vocab, seed)
    draft_vocab = len(tensors["lm_head.weight"])
    layer = dict(
        HEAD_SHAPE,
        hidden_size=hidden,
        intermediate_size=len(tensors["midlayer.mlp.gate_proj.weight"]),
        num_hidden_layers=1,
        max_position_embeddings=target_config["max_position_embeddings"],
        vocab_size=vocab,
        hidden_act="silu",
        tie_word_embeddings=False,
    )
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "eagle":
        config = dict(layer, architectures=["LlamaForCausalLMEagle3"], model_type="llama", torch_dtype="float16")
        config |= {"draft_vocab_size": draft_vocab, "target_hidden_size": hidden}
        if aux_layers is not None:
            config["eagle_aux_hidden_state_layer_ids"] = aux_layers
        (folder / "config.json").write_text(json.dumps(config))
        torch.save(
            {n: t.half() if t.is_floating_point() else t for n, t in tensors.items()}, folder / "pytorch_model.bin"
        )
        return folder
    config = {
        "architectures": ["Eagle3Speculator"],
        "speculators_model_type": "eagle3",
        "speculators_version": "0.1.0",
        "draft_vocab_size": draft_vocab,
        "target_hidden_size": hidden,
        "transformer_layer_config": dict(layer, model_type="llama", architectures=["LlamaForCausalLM"]),
        "speculators_config": {
            "algorithm": "eagle3",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": speculative_tokens}],
            "default_proposal_method": "greedy",
            "verifier": {"name_or_path": str(target), "architectures": ["LlamaForCausalLM"]},
        },
    }
    if norm_before_residual is not None:
        config["norm_before_residual"] = norm_before_residual
    if aux_layers is not None:
        config["eagle_aux_hidden_state_layer_ids"] = aux_layers
    (folder / "config.json").write_text(json.dumps(config))
    renamed = {n.replace("midlayer.", "layers.0."): t for n, t in tensors.items()}
    renamed["embed_tokens.weight"] = read_embedding_and_head(target)[0]
    save_file(
        {n: t.bfloat16() if t.is_floating_point() else t for n, t in renamed.items()}, str(folder / "model.safetensors")
    )
    return folder


def target_aux_states(target: Path, tokens: list[int], layers: tuple[int, ...]) -> torch.Tensor:
    """[len(tokens) - 1, 3 H]: the inputs of `layers` at each position but the last, from transformers."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(target)).eval()
    with torch.no_grad():
        states = model(torch.tensor([tokens[:-1]]), output_hidden_states=True).hidden_states
    return torch.cat([states[i][0] for i in layers], -1)


# -- the published formula, in float64, recomputed from scratch for every row ---------------------


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """x [rows, heads, head_dim] rotated by Llama's default RoPE (rotate-half pairing)."""
    half = x.shape[-1] // 2
    inv = 1.0 / theta ** (torch.arange(0, half, dtype=x.dtype) * 2 / x.shape[-1])
    angles = positions.to(x.dtype)[:, None] * inv[None]  # [rows, half]
    cos, sin = (torch.cat([f(angles)] * 2, -1)[:, None] for f in (torch.cos, torch.sin))
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


class Eagle3Reference:
    """The head as the papers' code computes it: one decoder layer over all rows at once."""

    def __init__(self, head: Path, target: Path, dtype: torch.dtype = torch.float64) -> None:
        raw = json.loads((head / "config.json").read_text())
        self.config = raw.get("transformer_layer_config", raw)
        self.norm_before_residual = bool(raw.get("norm_before_residual", "speculators_model_type" in raw))
        names = {n.removeprefix("model.").replace("layers.0.", "midlayer."): t for n, t in read_tensors(head).items()}
        self.w = {n: t.to(dtype) if t.is_floating_point() else t for n, t in names.items()}
        self.w.setdefault("embed_tokens.weight", read_embedding_and_head(target)[0].to(dtype))
        self.draft_to_target = torch.arange(len(self.w["d2t"])) + self.w["d2t"]

    def layer(self, tokens: torch.Tensor, g: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Rows (token, state g) at positions, each attending where mask [rows, rows] is True. -> the
        layer's output before the final norm [rows, H]."""
        w, c, p = self.w, self.config, "midlayer."
        eps, heads, kv_heads = c["rms_norm_eps"], c["num_attention_heads"], c["num_key_value_heads"]
        head_dim = c.get("head_dim") or c["hidden_size"] // heads
        normed = _rms(g, w[p + "hidden_norm.weight"], eps)
        x = torch.cat([_rms(w["embed_tokens.weight"][tokens], w[p + "input_layernorm.weight"], eps), normed], -1)
        residual = normed if self.norm_before_residual else g
        q, k, v = (x @ w[p + f"self_attn.{n}_proj.weight"].T for n in "qkv")
        q = _rope(q.view(len(x), heads, head_dim), positions, c["rope_theta"])
        k = _rope(k.view(len(x), kv_heads, head_dim), positions, c["rope_theta"]).repeat_interleave(
            heads // kv_heads, 1
        )
        v = v.view(len(x), kv_heads, head_dim).repeat_interleave(heads // kv_heads, 1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(head_dim)
        attention = torch.einsum("hqk,khd->qhd", scores.masked_fill(~mask, float("-inf")).softmax(-1), v)
        x = residual + attention.reshape(len(x), -1) @ w[p + "self_attn.o_proj.weight"].T
        h = _rms(x, w[p + "post_attention_layernorm.weight"], eps)
        gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        return x + (F.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        """[rows, draft vocab]"""
        return _rms(out, self.w["norm.weight"], self.config["rms_norm_eps"]) @ self.w["lm_head.weight"].T

    def drafts(self, tokens: list[int], states: torch.Tensor, k: int) -> tuple[list[int], torch.Tensor]:
        """states [len(tokens) - 1, 3 Ht]: row j the target's at position j, paired with tokens[j + 1].
        -> k argmax drafts (target ids) and the states fed back after each [k, H]."""
        row_tokens = list(tokens[1:])
        g = states.to(self.w["fc.weight"].dtype) @ self.w["fc.weight"].T
        drafted, fed_back = [], []
        for _ in range(k):
            n = len(row_tokens)
            out = self.layer(torch.tensor(row_tokens), g, torch.arange(n), torch.ones(n, n, dtype=torch.bool).tril())
            token = int(self.draft_to_target[self.logits(out[-1:]).argmax(-1)])
            drafted.append(token)
            fed_back.append(out[-1])
            row_tokens.append(token)
            g = torch.cat([g, out[-1:]])
        return drafted, torch.stack(fed_back)


# -- heads that accept: fitted by gradient descent to the target's own text -----------------------


def fit_eagle3(
    folder: Path,
    target: Path,
    texts: list[tuple[int, list[int]]],
    layers: list[int],
    *,
    steps: int = 60,
    seed: int = 0,
) -> Path:
    """A speculators-format head for `target`, trained on its texts (prompt length, prompt + output)
    with two steps of training-time test: step 1 pairs token x_{j+1} with fc(s_j) and predicts
    x_{j+2}; step 2, at position j + 1, pairs x_{j+2} with step 1's output at j, attends to step-1
    rows up to j and itself, and predicts x_{j+3}. Random init; Adam; float32."""
    write_eagle3(folder, target, layout="speculators", aux_layers=layers, seed=seed)
    head = Eagle3Reference(folder, target, torch.float32)
    trained = [n for n, t in head.w.items() if t.is_floating_point() and n != "embed_tokens.weight"]
    for n in trained:
        head.w[n] = head.w[n].clone().requires_grad_()
    target_to_draft = torch.full((len(head.w["embed_tokens.weight"]),), -100)
    target_to_draft[head.draft_to_target] = torch.arange(len(head.draft_to_target))
    data = [(first, torch.tensor(tokens), target_aux_states(target, tokens, tuple(layers))) for first, tokens in texts]
    optimizer = torch.optim.Adam([head.w[n] for n in trained], lr=1e-2)
    torch.manual_seed(seed)
    for _ in range(steps):
        loss = sum(_two_step_loss(head, first, tokens, states, target_to_draft) for first, tokens, states in data)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    tensors = {n.replace("midlayer.", "layers.0."): t.detach().float() for n, t in head.w.items() if n in trained}
    tensors |= {
        "d2t": head.w["d2t"],
        "t2d": head.w["t2d"],
        "embed_tokens.weight": head.w["embed_tokens.weight"].float(),
    }
    save_file({n: t.contiguous() for n, t in tensors.items()}, str(folder / "model.safetensors"))
    return folder


def _two_step_loss(
    head: Eagle3Reference, first: int, tokens: torch.Tensor, states: torch.Tensor, target_to_draft: torch.Tensor
) -> torch.Tensor:
    n = len(tokens) - 1
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    out1 = head.layer(tokens[1:], states @ head.w["fc.weight"].T, torch.arange(n), causal)
    # step 2 for rows j < n - 1: the step-1 rows <= j, then its own
    m = n - 1
    rows = torch.cat([tokens[1:], tokens[2:]])
    g = torch.cat([states @ head.w["fc.weight"].T, out1[:m]])
    positions = torch.cat([torch.arange(n), torch.arange(1, m + 1)])
    mask = torch.zeros(n + m, n + m, dtype=torch.bool)
    mask[:n, :n] = causal
    mask[n:, :n] = torch.ones(m, n, dtype=torch.bool).tril()
    mask[n:, n:] = torch.eye(m, dtype=torch.bool)
    out2 = head.layer(rows, g, positions, mask)[n:]
    start = max(first - 1, 0)
    loss1 = F.cross_entropy(head.logits(out1[start : n - 1]), target_to_draft[tokens[start + 2 :]], ignore_index=-100)
    loss2 = F.cross_entropy(head.logits(out2[start : m - 1]), target_to_draft[tokens[start + 3 :]], ignore_index=-100)
    return loss1 + 0.8 * loss2


def target_texts(target: Path, prompts: list[list[int]], params) -> list[tuple[int, list[int]]]:
    """(prompt length, prompt + the target's own output) per prompt."""
    from splitspec import LLM

    outputs = LLM(str(target)).generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [(len(p), p + o.outputs[0].token_ids) for p, o in zip(prompts, outputs)]


def runner_aux_states(llm, tokens: list[int], layers: tuple[int, ...]) -> torch.Tensor:
    """The native runner's view of target_aux_states."""
    hidden = llm.runner.forward_with_hidden([ForwardInput("aux", tokens[:-1], 1, len(tokens) - 1)], layers)[1].cpu()
    llm.runner.free("aux")
    return hidden[:, : len(layers) * hidden.shape[1] // (len(layers) + 1)]
