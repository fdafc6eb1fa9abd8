"""Rotary position embeddings for the native runner: the checkpoint's RoPE settings, read the same
way under transformers 4.x and 5.x, and the inverse frequencies they define.

transformers 5 gathers everything into `config.rope_parameters` (rope_theta included); transformers
4.x keeps `rope_theta` at the top level and the scaling in `config.rope_scaling`, and checkpoints
written before 4.42 name the type "type" rather than "rope_type". Reading only one spelling would
silently drop a Llama-3.1 or YaRN checkpoint's scaling on the other version.

The frequencies follow transformers' `modeling_rope_utils` (identical in 4.56 and 5.x for the
types below), so the native runner's logits match transformers' own model.
"""

from __future__ import annotations

import math
from typing import Any

import torch

NATIVE_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
DEFAULT_ROPE_THETA = 10000.0
# YaRN's default correction range, in rotations (Peng et al. 2023, arXiv 2309.00071)
YARN_BETA_FAST = 32
YARN_BETA_SLOW = 1


def rope_parameters(config: Any) -> dict[str, Any]:
    """The config's RoPE settings in transformers 5's spelling: rope_type, rope_theta and the scaling
    keys, with the pretraining context (original_max_position_embeddings) filled in for the types that
    need it, as transformers does. `config` is a transformers config of either major version, or
    anything with its attributes."""
    params = getattr(config, "rope_parameters", None)
    if params is None:  # transformers 4.x
        params = getattr(config, "rope_scaling", None) or {}
    params = dict(params)
    params.setdefault("rope_theta", getattr(config, "rope_theta", None) or DEFAULT_ROPE_THETA)
    legacy_type = params.pop("type", None)
    params["rope_type"] = params.get("rope_type") or legacy_type or "default"
    if params["rope_type"] in ("llama3", "yarn"):
        params.setdefault("original_max_position_embeddings", config.max_position_embeddings)
    return params


def inverse_frequencies(params: dict[str, Any], head_dim: int) -> tuple[torch.Tensor, float]:
    """([head_dim / 2] inverse frequencies, the factor cos and sin are multiplied by). The factor is
    YaRN's attention scaling (its square multiplies every attention logit) and 1 for the other types."""
    rope_type = params["rope_type"]
    if rope_type not in NATIVE_ROPE_TYPES:
        raise ValueError(f"rope_type {rope_type!r} has no native implementation; expected one of {NATIVE_ROPE_TYPES}")
    base = params["rope_theta"]
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    inv_freq = 1.0 / (base**exponents)  # [head_dim / 2]
    if rope_type == "default":
        return inv_freq, 1.0
    if rope_type == "linear":
        return inv_freq / params["factor"], 1.0
    original_max = params["original_max_position_embeddings"]
    if rope_type == "llama3":
        return _llama3(inv_freq, params, original_max), 1.0
    return _yarn(inv_freq, params, head_dim, original_max)


def _llama3(inv_freq: torch.Tensor, params: dict[str, Any], original_max: int) -> torch.Tensor:
    """Long wavelengths are divided by `factor`, short ones kept, the band between interpolated."""
    factor, low_freq_factor, high_freq_factor = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
    low_freq_wavelen = original_max / low_freq_factor
    high_freq_wavelen = original_max / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original_max / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn(
    inv_freq: torch.Tensor, params: dict[str, Any], head_dim: int, original_max: int
) -> tuple[torch.Tensor, float]:
    """Dimensions that rotate fewer than beta_slow times over the original context are interpolated
    (divided by `factor`), those that rotate more than beta_fast times are kept, with a linear ramp
    between; the attention scaling defaults to 0.1 ln(factor) + 1 (DeepSeek's mscale variant when
    both mscale and mscale_all_dim are given)."""
    factor = params["factor"]
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = _yarn_mscale(factor)
    base = params["rope_theta"]

    def correction_dim(num_rotations: float) -> float:
        return head_dim * math.log(original_max / (num_rotations * 2 * math.pi)) / (2 * math.log(base))

    low = correction_dim(params.get("beta_fast") or YARN_BETA_FAST)
    high = correction_dim(params.get("beta_slow") or YARN_BETA_SLOW)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # avoid dividing by zero in the ramp
    ramp = torch.clamp((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp  # [head_dim / 2]: 1 keeps a dimension's frequency, 0 interpolates it
    return inv_freq / factor * (1 - extrapolation) + inv_freq * extrapolation, float(attention_factor)
