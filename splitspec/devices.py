"""Which device a model runs on: "auto", "cpu", "cuda" or "cuda:N", resolved once with an error a
user can act on, and the dtype "auto" means there."""

from __future__ import annotations

import torch

from splitspec.errors import SplitspecError

DEVICE_HELP = '"auto" (the first CUDA device when there is one, else the CPU), "cpu", "cuda" or "cuda:N"'


def resolve_device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise SplitspecError(f"device {device!r} is not a device; use {DEVICE_HELP}") from None
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise SplitspecError(f"device {device!r} is not supported; use {DEVICE_HELP}")
    if not torch.cuda.is_available():
        why = "this PyTorch has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        raise SplitspecError(
            f"device {device!r} needs CUDA, but {why}; run on the CPU with device='cpu' (--device cpu)"
        )
    index = 0 if resolved.index is None else resolved.index
    if index >= torch.cuda.device_count():
        raise SplitspecError(
            f"device {device!r}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 to "
            f"cuda:{torch.cuda.device_count() - 1})"
        )
    return torch.device("cuda", index)


def auto_dtype(checkpoint_dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """dtype "auto": float32 on the CPU (half-precision matmuls are slow there); on CUDA the
    checkpoint's own bfloat16 or float16, and bfloat16 (float16 where the GPU lacks it) for a float32
    checkpoint, as vLLM does."""
    if device.type != "cuda":
        return torch.float32
    if isinstance(checkpoint_dtype, str):
        checkpoint_dtype = getattr(torch, checkpoint_dtype.removeprefix("torch."), None)
    if checkpoint_dtype in (torch.bfloat16, torch.float16):
        return checkpoint_dtype
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a host clock measures it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(values: torch.Tensor | list, device: torch.device, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Host values on the device without waiting for the device's queued work: a plain copy from pageable
    memory waits for the stream, which stalls the host behind every kernel queued before it."""
    host = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
    return host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host
