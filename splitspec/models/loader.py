"""Pick the runner for a checkpoint: native paged Llama-family runner, or the transformers backend."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from splitspec.config import RunnerConfig
from splitspec.devices import auto_dtype, resolve_device
from splitspec.errors import SplitspecError
from splitspec.models.runner import ModelRunner
from splitspec.models.tensor_parallel import TensorParallel, check_divisible
from splitspec.models.tp_workers import WorkerGroup, rank_device


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


def load_runner(path: Path, config: RunnerConfig = RunnerConfig(), tp: TensorParallel | None = None) -> ModelRunner:
    """The native paged runner where the architecture has one (unless config.backend says
    "transformers"), else the transformers backend. With config.tensor_parallel_size > 1 this
    process becomes rank 0 and starts the other ranks (splitspec.models.tp_workers); a worker passes
    its own `tp`."""
    from splitspec.models.hf_backend import HFRunner
    from splitspec.models.llama import LlamaRunner, supports_natively

    model_config = load_config(path)
    device = resolve_device(config.device)
    torch_dtype = resolve_dtype(config.dtype, model_config, device)
    native = supports_natively(model_config)
    if config.tensor_parallel_size != 1 and tp is None:
        return _load_tensor_parallel(path, config, model_config, device, native)
    if tp is not None:
        device = rank_device(device, tp.rank)
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
                tp=tp,
                enforce_eager=config.enforce_eager,
                quantization=config.quantization,
                prefix_caching=config.enable_prefix_caching,
            )
        if config.quantization is not None:
            raise SplitspecError(
                f"{path}: quantization={config.quantization!r} needs the native runner (Llama family), not the "
                "transformers backend"
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


def _load_tensor_parallel(path: Path, config: RunnerConfig, model_config, device: torch.device, native: bool):
    """Rank 0 here, ranks 1..N-1 in worker processes this one owns."""

    size = config.tensor_parallel_size
    if not isinstance(size, int) or size < 1:
        raise SplitspecError(f"tensor_parallel_size must be a positive integer, got {size!r}")
    if not native or config.backend == "transformers":
        raise SplitspecError(
            f"tensor_parallel_size={size} needs the native runner; {model_config.model_type!r} models run on "
            "the transformers backend, on one device"
        )
    check_divisible(model_config, size)
    if device.type == "cuda" and device.index + size > torch.cuda.device_count():
        raise SplitspecError(
            f"tensor_parallel_size={size} from {device} needs CUDA devices {device.index} to "
            f"{device.index + size - 1}, but there are {torch.cuda.device_count()}"
        )
    workers = WorkerGroup(size, path, replace(config, device=str(device)), device)
    try:
        runner = load_runner(path, config, tp=TensorParallel(0, size))
    except RuntimeError as exc:  # a collective failed: a worker could not load its shard
        lost = workers.wait_for_loss()
        workers.close(graceful=False)
        if not lost:
            raise
        raise SplitspecError(
            f"tensor-parallel rank {lost[0]} failed while loading (its message is above): {exc}"
        ) from None
    except BaseException:
        workers.close(graceful=False)
        raise
    runner.workers = workers
    return runner
