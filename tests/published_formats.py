"""Drafter checkpoints laid out as their authors published them, with random values.

The writers in tiny_checkpoints.py encode this project's own reading of each format, so a test built
on them cannot notice that reading being wrong. Here config.json, tensor names, dtypes and the shape
of every tensor (as a formula over the config) are copied from public sources, cited fact by fact.
Full size is gigabytes, so `write_published` keeps every name, key, dtype and shape formula and only
replaces the dimension values in config.json by small ones (`small_dims`), chosen to keep the
published ratios (GQA group size, inner / emb width).

Facts that could not be found are said to be missing rather than guessed; tests cover each plausible
value where the loader's behaviour could depend on it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file


@dataclass(frozen=True)
class PublishedFormat:
    hub_id: str
    config: dict  # config.json as published, at full size
    tensors: dict[str, tuple[str, ...]]  # tensor name -> shape, in the dimension names of `dims`
    dims: Callable[[dict], dict[str, int]]  # config -> the size of each dimension name
    dtypes: tuple[torch.dtype, ...]  # the published dtype, or every candidate where it is unknown
    small_dims: dict  # config.json overrides that shrink the dimensions, ratios kept
    stated_parameters: float  # the parameter count its authors give, rounded as they round it
    counted: Callable[[str], bool] = lambda name: True  # tensors the stated count covers


def _mlp_speculator_dims(config: dict) -> dict[str, int]:
    # inner_dim 0 means emb_dim: fms-extras fms_extras/models/speculator.py, MLPSpeculator.__init__
    return {"vocab": config["vocab_size"], "emb": config["emb_dim"], "inner": config["inner_dim"] or config["emb_dim"]}


# ibm-fms/llama3-8b-accelerator (since moved to ibm-ai-platform/llama3-8b-accelerator).
# - emb_dim 4096, inner_dim 3072, vocab_size 128256, n_predict 4, untied, unscaled input: fms-extras
#   fms_extras/models/speculator.py registers these as variant "llama.llama3.8b.3_2b" (`_llama3_8b_3_2b`,
#   tie_weights and scale_input left at their False defaults), and IBM's inference script loads the hub
#   snapshot models--ibm-fms--llama3-8b-accelerator with --speculator_variant=3_2b --speculator_source=hf.
# - "3_2b": 3.2B parameters; the tensors below at full size add up to 3,192,938,496.
# - architectures / model_type: fms_extras/models/hf/modeling_mlp_speculator.py (MLPSpeculatorConfig,
#   MLPSpeculatorPreTrainedModel), the class vLLM's registry maps to its MLPSpeculator.
# - top_k_tokens_per_head [4, 3, 2, 2]: what IBM's script passes for this speculator; MLPSpeculatorConfig
#   asserts one entry per head. The stored value itself was not seen.
# - Not found: the published n_candidates, torch_dtype and transformers_version keys (left out: no loader
#   here reads them), and whether tie_weights / scale_input are written at all (an older
#   MLPSpeculatorConfig lacked them; the loader must then read False).
# - Tensor names: MLPSpeculatorPreTrainedModel holds the network as `self.speculator`, so save_pretrained
#   writes "speculator.<name>"; fms-extras' "hf" adapter (_rename_hf_weights_to_fms), vLLM's
#   MLPSpeculator.load_weights and TGI's MLPSpeculatorHead.load (prefix "speculator") all read that.
#   Per head i: emb.i [vocab, inner] (nn.Embedding), proj.i [inner, emb if i == 0 else inner] (nn.Linear,
#   no bias), head.i [vocab, inner] (no bias), ln.i.weight / ln.i.bias [inner] (LayerNormParameterized
#   with scale and shift): fms-extras MLPSpeculator.__init__, TGI MLPSpeculatorModel.
# - dtype: not found; both 16-bit types are written. The file layout was not seen either: in 16 bits the
#   weights are 6.4 GB, over save_pretrained's default 5 GB shard size, so one file and shards are written.
LLAMA3_8B_ACCELERATOR = PublishedFormat(
    hub_id="ibm-fms/llama3-8b-accelerator",
    config={
        "architectures": ["MLPSpeculatorPreTrainedModel"],
        "model_type": "mlp_speculator",
        "emb_dim": 4096,
        "inner_dim": 3072,
        "vocab_size": 128256,
        "n_predict": 4,
        "top_k_tokens_per_head": [4, 3, 2, 2],
        "tie_weights": False,
        "scale_input": False,
    },
    tensors={
        "speculator.emb.0.weight": ("vocab", "inner"),
        "speculator.emb.1.weight": ("vocab", "inner"),
        "speculator.emb.2.weight": ("vocab", "inner"),
        "speculator.emb.3.weight": ("vocab", "inner"),
        "speculator.proj.0.weight": ("inner", "emb"),
        "speculator.proj.1.weight": ("inner", "inner"),
        "speculator.proj.2.weight": ("inner", "inner"),
        "speculator.proj.3.weight": ("inner", "inner"),
        "speculator.head.0.weight": ("vocab", "inner"),
        "speculator.head.1.weight": ("vocab", "inner"),
        "speculator.head.2.weight": ("vocab", "inner"),
        "speculator.head.3.weight": ("vocab", "inner"),
        "speculator.ln.0.weight": ("inner",),
        "speculator.ln.0.bias": ("inner",),
        "speculator.ln.1.weight": ("inner",),
        "speculator.ln.1.bias": ("inner",),
        "speculator.ln.2.weight": ("inner",),
        "speculator.ln.2.bias": ("inner",),
        "speculator.ln.3.weight": ("inner",),
        "speculator.ln.3.bias": ("inner",),
    },
    dims=_mlp_speculator_dims,
    dtypes=(torch.float16, torch.bfloat16),
    small_dims={"emb_dim": 64, "inner_dim": 48, "vocab_size": 256},
    stated_parameters=3.2e9,  # "3_2b"
)

# ibm-fms/llama3-70b-accelerator: the tied layout.
# - emb_dim 8192, inner_dim 3584, vocab_size 128256, n_predict 4, tie_weights and scale_input true:
#   fms-extras `_llama3_70b_961m`, registered as "llama.llama3.70b.961m".
# - Tensor names: TGI's MLPSpeculatorModelTied reads exactly speculator.emb.0, proj.0, proj.1, head.0
#   and ln.0 (every head shares emb.0 / head.0 / ln.0, heads after the first share proj.1:
#   fms-extras MLPSpeculator.__init__); the scale_input norm (ln0) has neither scale nor shift, so no
#   tensor. "961m": these tensors at full size add up to 961,551,360 parameters.
# - Not found, as above: n_candidates, torch_dtype, transformers_version, the stored top_k_tokens_per_head,
#   the dtype and the file layout.
LLAMA3_70B_ACCELERATOR = PublishedFormat(
    hub_id="ibm-fms/llama3-70b-accelerator",
    config={
        "architectures": ["MLPSpeculatorPreTrainedModel"],
        "model_type": "mlp_speculator",
        "emb_dim": 8192,
        "inner_dim": 3584,
        "vocab_size": 128256,
        "n_predict": 4,
        "top_k_tokens_per_head": [4, 3, 2, 2],
        "tie_weights": True,
        "scale_input": True,
    },
    tensors={
        "speculator.emb.0.weight": ("vocab", "inner"),
        "speculator.proj.0.weight": ("inner", "emb"),
        "speculator.proj.1.weight": ("inner", "inner"),
        "speculator.head.0.weight": ("vocab", "inner"),
        "speculator.ln.0.weight": ("inner",),
        "speculator.ln.0.bias": ("inner",),
    },
    dims=_mlp_speculator_dims,
    dtypes=(torch.float16, torch.bfloat16),
    small_dims={"emb_dim": 64, "inner_dim": 28, "vocab_size": 256},
    stated_parameters=961e6,  # "961m"
)


def _llama_eagle_dims(config: dict) -> dict[str, int]:
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    return {
        "vocab": config["vocab_size"],
        "hidden": config["hidden_size"],
        "two_hidden": 2 * config["hidden_size"],
        "q_out": config["num_attention_heads"] * head_dim,
        "kv_out": config["num_key_value_heads"] * head_dim,
        "intermediate": config["intermediate_size"],
    }


# yuhuili/EAGLE-LLaMA3-Instruct-8B (EAGLE-1 head for Meta-Llama-3-8B-Instruct).
# - config.json: SafeAILab/EAGLE eagle/train/EAGLE-LLaMA3-Instruct-8B (added 2024-07-16), the config the
#   head was trained with, key for key ("bias": false is EAGLE's own key, read by ea_model.py to build
#   fc without bias). That the hub copy is byte-identical was not verified.
# - Tensor names: the state dict of EAGLE's eagle/model/cnets1.py Model (what eagle/train/main.py trains
#   and saves), no prefix: embed_tokens.weight, layers.0.* as in Llama but without input_layernorm
#   (LlamaDecoderLayer skips it for index 0), fc.weight [hidden, 2 * hidden]; the rotary buffers are
#   registered with persistent=False, so not saved.
# - No fc.bias: "bias": false above, and TensorRT-LLM issue #2588 (converting this very head fails with
#   KeyError 'fc.bias').
# - embed_tokens.weight is in the file: the EAGLE author in SafeAILab/EAGLE issue #60 ("uses the
#   embedding layer of the target model. It is not trained but is saved in the checkpoint").
# - File: pytorch_model.bin, which EAGLE's ea_model.py loads first (model.safetensors is its fallback);
#   not verified for this head.
# - dtype: float32 per the same issue #60 answer ("This checkpoint saves weights in fp32 format"), given
#   for EAGLE's heads in general; config.json says torch_dtype float16. Both are written.
# - "0.25B" parameters: the EAGLE README's table; the tensors below without the (untrained, copied)
#   embedding add up to 251,662,336 at full size.
EAGLE_LLAMA3_INSTRUCT_8B = PublishedFormat(
    hub_id="yuhuili/EAGLE-LLaMA3-Instruct-8B",
    config={
        "architectures": ["LlamaForCausalLM"],
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 14336,
        "max_position_embeddings": 2048,
        "model_type": "llama",
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "num_hidden_layers": 1,
        "pad_token_id": 0,
        "rms_norm_eps": 1e-05,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.28.1",
        "use_cache": True,
        "vocab_size": 128256,
        "rope_theta": 500000.0,
        "bias": False,
    },
    tensors={
        "embed_tokens.weight": ("vocab", "hidden"),
        "layers.0.self_attn.q_proj.weight": ("q_out", "hidden"),
        "layers.0.self_attn.k_proj.weight": ("kv_out", "hidden"),
        "layers.0.self_attn.v_proj.weight": ("kv_out", "hidden"),
        "layers.0.self_attn.o_proj.weight": ("hidden", "q_out"),
        "layers.0.mlp.gate_proj.weight": ("intermediate", "hidden"),
        "layers.0.mlp.up_proj.weight": ("intermediate", "hidden"),
        "layers.0.mlp.down_proj.weight": ("hidden", "intermediate"),
        "layers.0.post_attention_layernorm.weight": ("hidden",),
        "fc.weight": ("hidden", "two_hidden"),
    },
    dims=_llama_eagle_dims,
    dtypes=(torch.float32, torch.float16),
    # 32 query heads per 8 KV heads kept as 4 per 1; intermediate / hidden = 3.5 kept
    small_dims={
        "hidden_size": 64,
        "intermediate_size": 224,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "vocab_size": 256,
    },
    stated_parameters=0.25e9,  # "0.25B"
    counted=lambda name: name != "embed_tokens.weight",
)

PUBLISHED_FORMATS = {f.hub_id: f for f in (LLAMA3_8B_ACCELERATOR, LLAMA3_70B_ACCELERATOR, EAGLE_LLAMA3_INSTRUCT_8B)}


def tensor_shapes(fmt: PublishedFormat, config: dict) -> dict[str, tuple[int, ...]]:
    dims = fmt.dims(config)
    return {name: tuple(dims[d] for d in shape) for name, shape in fmt.tensors.items()}


def small_config(fmt: PublishedFormat) -> dict:
    return {**fmt.config, **fmt.small_dims}


def random_tensors(fmt: PublishedFormat, *, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Values for the small config: norm scales near 1, shifts near 0, matrices scaled by fan-in so
    activations stay O(1) and logits far from flat."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in tensor_shapes(fmt, small_config(fmt)).items():
        if name.endswith("norm.weight") or (".ln." in name and name.endswith(".weight")):
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            t = 0.1 * torch.randn(shape, generator=g)
        elif "emb" in name:
            t = torch.randn(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g) / math.sqrt(shape[1])
        tensors[name] = t.to(dtype)
    return tensors


def save_published(
    fmt: PublishedFormat, folder: Path, tensors: dict[str, torch.Tensor], *, num_shards: int = 1
) -> Path:
    """config.json plus the weights in the published file layout: pytorch_model.bin for EAGLE heads,
    safetensors (sharded with an index, as save_pretrained does, when num_shards > 1) otherwise."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(small_config(fmt), indent=2))
    if fmt.config["model_type"] != "mlp_speculator":
        torch.save(tensors, folder / "pytorch_model.bin")
        return folder
    if num_shards == 1:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder
    names = list(tensors)
    weight_map = {}
    for k in range(num_shards):
        file = f"model-{k + 1:05d}-of-{num_shards:05d}.safetensors"
        shard = {n: tensors[n] for n in names[k::num_shards]}
        save_file(shard, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())}}
    (folder / "model.safetensors.index.json").write_text(json.dumps({**index, "weight_map": weight_map}, indent=2))
    return folder


def write_published(
    fmt: PublishedFormat, folder: Path, *, dtype: torch.dtype, seed: int = 0, num_shards: int = 1
) -> Path:
    return save_published(fmt, folder, random_tensors(fmt, seed=seed, dtype=dtype), num_shards=num_shards)
