"""Tiny randomly initialised Llama-family checkpoints, written to disk like real ones."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file


def write_tiny_checkpoint(
    path: Path,
    arch: str = "llama",
    *,
    vocab_size: int = 256,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    seed: int = 0,
    tie_word_embeddings: bool = False,
    init_std: float = 0.25,
    rope_parameters: dict | None = None,
    max_position_embeddings: int = 512,
    **extra_config,
) -> Path:
    """Write config.json + model.safetensors. init_std is large so that logits are far from flat."""
    from transformers import AutoModelForCausalLM, GraniteConfig, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        initializer_range=init_std,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    common.update(extra_config)
    if rope_parameters is not None:
        common["rope_parameters"] = rope_parameters
    config_cls = {
        "llama": LlamaConfig,
        "qwen2": Qwen2Config,
        "qwen3": Qwen3Config,
        "mistral": MistralConfig,
        "granite": GraniteConfig,
    }[arch]
    config = config_cls(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            elif param.dim() == 1:
                param.normal_(0.0, init_std)
    model.save_pretrained(str(path))
    return Path(path)


def write_perturbed_copy(src: Path, dst: Path, *, scale: float, seed: int = 1) -> Path:
    """A draft model for `src`: the same weights plus Gaussian noise, so it agrees often but not always."""
    import shutil

    from safetensors.torch import load_file, save_file

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for item in Path(src).iterdir():
        if item.suffix != ".safetensors":
            shutil.copy(item, dst / item.name)
    gen = torch.Generator().manual_seed(seed)
    for shard in Path(src).glob("*.safetensors"):
        tensors = load_file(str(shard))
        noisy = {k: v + scale * v.std() * torch.randn(v.shape, generator=gen) for k, v in tensors.items()}
        save_file(noisy, str(dst / shard.name), metadata={"format": "pt"})
    return dst


def write_tiny_gpt2(path: Path, *, vocab_size: int = 256, seed: int = 0) -> Path:
    """A model type the native runner does not cover, to exercise the transformers backend."""
    from transformers import AutoModelForCausalLM, GPT2Config

    config = GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=512, initializer_range=0.25)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(path))
    return Path(path)


def write_mlp_speculator(
    folder: Path,
    *,
    emb_dim: int,
    inner_dim: int,
    vocab_size: int,
    n_predict: int,
    tied: bool,
    scale_input: bool,
    seed: int = 0,
    prefix: str = "",
) -> Path:
    """A checkpoint laid out as IBM publishes them: config.json and model.safetensors. A tied one
    holds only the shared tensors (emb.0, proj.0, proj.1, ln.0, head.0)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["MLPSpeculatorPreTrainedModel"],
        "model_type": "mlp_speculator",
        "emb_dim": emb_dim,
        "inner_dim": inner_dim,
        "vocab_size": vocab_size,
        "n_predict": n_predict,
        "top_k_tokens_per_head": [1] * n_predict,
        "n_candidates": 1,
        "tie_weights": tied,
        "scale_input": scale_input,
    }
    (folder / "config.json").write_text(json.dumps(config))
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    heads = 1 if tied else n_predict
    for i in range(heads):
        tensors[f"emb.{i}.weight"] = torch.randn(vocab_size, inner_dim, generator=g)
        tensors[f"ln.{i}.weight"] = 1 + 0.1 * torch.randn(inner_dim, generator=g)
        tensors[f"ln.{i}.bias"] = 0.1 * torch.randn(inner_dim, generator=g)
        tensors[f"head.{i}.weight"] = torch.randn(vocab_size, inner_dim, generator=g) / math.sqrt(inner_dim)
    for i in range(2 if tied else n_predict):
        tensors[f"proj.{i}.weight"] = torch.randn(inner_dim, emb_dim if i == 0 else inner_dim, generator=g) / math.sqrt(
            inner_dim
        )
    save_file({prefix + name: t for name, t in tensors.items()}, str(folder / "model.safetensors"))
    return folder


def write_eagle(
    folder: Path,
    *,
    hidden_size: int,
    vocab_size: int,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    seed: int = 0,
    with_embedding: bool = False,
    fc_bias: bool = False,
    prefix: str = "",
    as_bin: bool = False,
) -> Path:
    """An EAGLE head laid out as published: a one-layer Llama config.json and fc / layers.0.* weights
    (no input_layernorm in layer 0, no norm, no lm_head), in safetensors or pytorch_model.bin."""
    from transformers import LlamaConfig

    folder.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=1,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=512,
        architectures=["LlamaForCausalLM"],
    )
    config.save_pretrained(str(folder))
    g = torch.Generator().manual_seed(seed)
    head_dim = hidden_size // num_heads

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) / math.sqrt(shape[-1])

    p = "layers.0."
    tensors = {
        "fc.weight": rand(hidden_size, 2 * hidden_size),
        p + "self_attn.q_proj.weight": rand(num_heads * head_dim, hidden_size),
        p + "self_attn.k_proj.weight": rand(num_kv_heads * head_dim, hidden_size),
        p + "self_attn.v_proj.weight": rand(num_kv_heads * head_dim, hidden_size),
        p + "self_attn.o_proj.weight": rand(hidden_size, num_heads * head_dim),
        p + "mlp.gate_proj.weight": rand(2 * hidden_size, hidden_size),
        p + "mlp.up_proj.weight": rand(2 * hidden_size, hidden_size),
        p + "mlp.down_proj.weight": rand(hidden_size, 2 * hidden_size),
        p + "post_attention_layernorm.weight": 1 + 0.1 * torch.randn(hidden_size, generator=g),
    }
    if fc_bias:
        tensors["fc.bias"] = 0.1 * torch.randn(hidden_size, generator=g)
    if with_embedding:
        tensors["embed_tokens.weight"] = torch.randn(vocab_size, hidden_size, generator=g)
    tensors = {prefix + name: t.contiguous() for name, t in tensors.items()}
    if as_bin:
        torch.save(tensors, folder / "pytorch_model.bin")
    else:
        save_file(tensors, str(folder / "model.safetensors"))
    return folder
