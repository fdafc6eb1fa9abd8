"""Tiny randomly initialised Llama-family checkpoints, written to disk like real ones."""

from __future__ import annotations

from pathlib import Path

import torch


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
) -> Path:
    """Write config.json + model.safetensors. init_std is large so that logits are far from flat."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

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
    if rope_parameters is not None:
        common["rope_parameters"] = rope_parameters
    config_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[arch]
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
