"""Pick the runner for a checkpoint: native paged Llama-family runner, or the transformers backend."""

from __future__ import annotations

from pathlib import Path

import torch

from splitspec.config import RunnerConfig
from splitspec.devices import auto_dtype, resolve_device
from splitspec.errors import SplitspecError
from splitspec.models.runner import ModelRunner


def load_config(path: Path):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path))
    except Exception as exc:
        raise SplitspecError(f"cannot read {path / 'config.json'}: {exc}") from None


def resolve_dtype(dtype: str | torch.dtype, config, device: torch.device) -> torch.dtype:
    """'auto': the checkpoint's dtype on CUDA, float32 on the CPU (splitspec.devices.auto_dtype)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "float": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "half": torch.float16,
    }
    if dtype == "auto":
        return auto_dtype(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None), device)
    if dtype not in names:
        raise SplitspecError(f"dtype {dtype!r} is not supported; use auto, float32, bfloat16 or float16")
    return names[dtype]


def load_runner(path: Path, config: RunnerConfig = RunnerConfig()) -> ModelRunner:
    """The native paged runner where the architecture has one (unless config.backend says
    "transformers"), else the transformers backend."""
    from splitspec.models.hf_backend import HFRunner
    from splitspec.models.llama import LlamaRunner, supports_natively

    model_config = load_config(path)
    device = resolve_device(config.device)
    torch_dtype = resolve_dtype(config.dtype, model_config, device)
    native = supports_natively(model_config)
    if config.backend == "native" and not native:
        raise SplitspecError(
            f"{path}: model type {model_config.model_type!r} has no native runner; use backend='transformers'"
        )
    if config.backend not in ("auto", "native", "transformers"):
        raise SplitspecError(f"backend must be auto, native or transformers, got {config.backend!r}")
    try:
        if native and config.backend != "transformers":
            return LlamaRunner(
                path,
                model_config,
                device=device,
                dtype=torch_dtype,
                block_size=config.block_size,
                kv_cache_memory_bytes=config.kv_cache_memory_bytes,
                gpu_memory_utilization=config.gpu_memory_utilization,
                max_model_len=config.max_model_len,
                max_num_seqs=config.max_num_seqs,
                kernel_backend=config.kernel_backend,
            )
        return HFRunner(path, model_config, device=device, dtype=torch_dtype, max_model_len=config.max_model_len)
    except torch.cuda.OutOfMemoryError:
        cache = (
            f"a KV cache of {config.kv_cache_memory_bytes >> 20} MiB"
            if config.kv_cache_memory_bytes is not None
            else f"gpu_memory_utilization={config.gpu_memory_utilization}"
        )
        raise SplitspecError(
            f"{path} does not fit on {device} in {str(torch_dtype).removeprefix('torch.')} with {cache}: lower "
            "gpu_memory_utilization (or kv_cache_memory_bytes), max_model_len or max_num_seqs, use a smaller "
            "dtype, or a device with more free memory"
        ) from None
