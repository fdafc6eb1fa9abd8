"""EAGLE-3 heads (Li et al. 2025, arXiv 2503.01840) read from either published layout into one form.

EAGLE's own layout (yuhuili/EAGLE3-*): a flat Llama config with architectures
["LlamaForCausalLMEagle3"] and `draft_vocab_size`; tensors `midlayer.*`, usually without an
embedding (the target's is used). Red Hat's speculators layout: `speculators_model_type: "eagle3"`,
the layer's Llama config under `transformer_layer_config`, tensors under `layers.0.`, the target's
embedding shipped. Both hold `fc.weight [H, 3 Ht]`, the layer (q/k/v over [embedding, state], 2H
wide, and a `hidden_norm`), `norm.weight`, `lm_head.weight [draft vocab, H]` and `d2t`, the offsets
that map a draft id to a target id (target = draft + d2t[draft]). docs/eagle3.md cites each fact.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from splitspec.checkpoint import read_embedding_and_head, read_tensors
from splitspec.errors import SplitspecError

LAYER_TENSORS = (
    "input_layernorm.weight",
    "hidden_norm.weight",
    "post_attention_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)


def default_aux_layers(num_layers: int) -> tuple[int, ...]:
    """The target layers whose inputs a head reads unless its config names others: 2, L // 2 and
    L - 3 (vLLM's get_eagle3_aux_hidden_state_layers, EAGLE's modeling_llama_kv)."""
    return tuple(sorted({2, num_layers // 2, num_layers - 3}))


@dataclass
class Eagle3Head:
    layer_config: object
    """A transformers LlamaConfig for the head's one decoder layer; vocab_size is the draft vocabulary's."""
    tensors: dict[str, torch.Tensor]
    """The layer under LlamaRunner's names (model.layers.0.*), model.norm.weight, lm_head.weight and
    model.embed_tokens.weight (the head's own, or the target's)."""
    hidden_norm: torch.Tensor  # [H]
    fc: torch.Tensor  # [H, 3 * Ht]
    draft_to_target: torch.Tensor  # [draft vocab] int64: the target id of each draft id
    aux_layers: tuple[int, ...]
    """The target layers whose inputs the head reads, ascending."""
    norm_before_residual: bool
    num_speculative_tokens: int | None
    """The K its speculators config proposes; None in EAGLE's layout."""
    verifier: str | None
    """The target its speculators config names; None in EAGLE's layout."""


def read_speculators_config(path: Path) -> dict | None:
    """config.json of a speculators-format head, or None for any other checkpoint."""
    config = path / "config.json"
    if not config.is_file():
        return None
    data = json.loads(config.read_text())
    return data if data.get("speculators_model_type") == "eagle3" else None


def speculators_serving(model: str) -> tuple[str, dict] | None:
    """For `model` a speculators-format head: the target its config names and the speculative_config
    that serves it with the head and the K it proposes, as vLLM does; None for any other model."""
    path = Path(str(model)).expanduser()
    raw = read_speculators_config(path) if path.is_dir() else None
    if raw is None:
        return None
    target = ((raw.get("speculators_config") or {}).get("verifier") or {}).get("name_or_path")
    if not target:
        raise SplitspecError(f"{path} is an EAGLE-3 head whose config names no verifier: give the target as model")
    spec = {"method": "eagle3", "model": str(path), "num_speculative_tokens": _proposed_tokens(raw) or 3}
    return target, spec


def read_eagle3(path: Path, target_path: Path) -> Eagle3Head:
    """The head in `path`, for the target in `target_path` (whose layer count sets the default
    layers and whose embedding is used when the head ships none)."""
    from transformers import LlamaConfig

    from splitspec.models.loader import load_config

    raw = json.loads((path / "config.json").read_text())
    speculators = raw.get("speculators_model_type") == "eagle3"
    if speculators:
        layer = raw.get("transformer_layer_config")
        if not isinstance(layer, dict):
            raise SplitspecError(f"{path}/config.json has no transformer_layer_config: not a speculators EAGLE-3 head")
        layer_config = LlamaConfig(**({"num_hidden_layers": 1} | {k: v for k, v in layer.items() if k != "model_type"}))
        settings = raw
    else:
        layer_config = LlamaConfig(
            **({"num_hidden_layers": 1} | {k: v for k, v in raw.items() if k not in ("model_type", "eagle_config")})
        )
        settings = raw | (raw.get("eagle_config") or {})
    if getattr(layer_config, "num_hidden_layers", 1) != 1:
        raise SplitspecError(
            f"{path} has {layer_config.num_hidden_layers} decoder layers; splitspec runs one-layer EAGLE-3 heads"
        )
    if settings.get("norm_before_fc"):
        raise SplitspecError(f"{path} sets norm_before_fc, which splitspec does not run yet")
    target_config = load_config(target_path)
    weights = {
        name.removeprefix("model.").replace("midlayer.", "layers.0."): t for name, t in read_tensors(path).items()
    }
    missing = [n for n in ("fc.weight", "norm.weight", "lm_head.weight") if n not in weights]
    missing += [f"layers.0.{n}" for n in LAYER_TENSORS if f"layers.0.{n}" not in weights]
    if missing:
        raise SplitspecError(f"{path} is missing {', '.join(missing)}: not an EAGLE-3 head")
    hidden = layer_config.hidden_size
    fc = weights["fc.weight"]
    target_hidden = settings.get("target_hidden_size") or hidden
    if target_hidden != target_config.hidden_size or fc.shape[1] % target_hidden:
        raise SplitspecError(
            f"EAGLE-3 head {path} reads target states of width {target_hidden}, the target {target_path} has "
            f"{target_config.hidden_size}: it was trained for another model"
        )
    lm_head = weights["lm_head.weight"]
    draft_vocab = lm_head.shape[0]
    offsets = weights.get("d2t")
    if offsets is None:
        if draft_vocab != target_config.vocab_size:
            raise SplitspecError(
                f"{path} has a draft vocabulary of {draft_vocab} tokens but no d2t map to the target's"
            )
        offsets = torch.zeros(draft_vocab, dtype=torch.int64)
    draft_to_target = torch.arange(draft_vocab) + offsets.long()
    if (
        len(draft_to_target) != draft_vocab
        or not 0 <= int(draft_to_target.min()) <= int(draft_to_target.max()) < target_config.vocab_size
    ):
        raise SplitspecError(
            f"{path}'s d2t maps draft ids outside the target's {target_config.vocab_size}-token vocabulary"
        )
    aux_layers = _aux_layers(settings, target_config.num_hidden_layers, fc.shape[1] // target_hidden, path)
    embedding = weights.get("embed_tokens.weight")
    if embedding is None:
        embedding = read_embedding_and_head(target_path)[0]
    tensors = {f"model.layers.0.{n}": weights[f"layers.0.{n}"] for n in LAYER_TENSORS if n != "hidden_norm.weight"}
    tensors |= {
        "model.norm.weight": weights["norm.weight"],
        "lm_head.weight": lm_head,
        "model.embed_tokens.weight": embedding,
    }
    layer_config.vocab_size = draft_vocab
    layer_config.tie_word_embeddings = False
    return Eagle3Head(
        layer_config=layer_config,
        tensors=tensors,
        hidden_norm=weights["layers.0.hidden_norm.weight"],
        fc=fc,
        draft_to_target=draft_to_target,
        aux_layers=aux_layers,
        # vLLM's speculators reader defaults a missing key to True; EAGLE's layout has no such option
        norm_before_residual=bool(settings.get("norm_before_residual", speculators)),
        num_speculative_tokens=_proposed_tokens(raw) if speculators else None,
        verifier=((raw.get("speculators_config") or {}).get("verifier") or {}).get("name_or_path")
        if speculators
        else None,
    )


def _aux_layers(settings: dict, num_layers: int, num_states: int, path: Path) -> tuple[int, ...]:
    named = settings.get("eagle_aux_hidden_state_layer_ids")
    layers = tuple(sorted(named)) if named else default_aux_layers(num_layers)
    if named:  # vLLM reads id i as the input of layer i; SGLang as the output of layer i: say which is used
        print(f"EAGLE-3 head {path}: reading the inputs of target layers {list(layers)}", file=sys.stderr)
    if len(layers) != num_states or not all(0 <= i < num_layers for i in layers):
        raise SplitspecError(
            f"EAGLE-3 head {path} reads {num_states} target states but would take layers {list(layers)} of a "
            f"{num_layers}-layer target; set eagle_aux_hidden_state_layer_ids in its config.json"
        )
    return layers


def _proposed_tokens(raw: dict) -> int | None:
    methods = (raw.get("speculators_config") or {}).get("proposal_methods") or [{}]
    tokens = methods[0].get("speculative_tokens")
    return tokens if isinstance(tokens, int) and tokens > 0 else None
