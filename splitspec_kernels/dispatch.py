"""Which implementation of each kernel a runner uses: Triton on CUDA, the PyTorch reference elsewhere,
or whichever the caller names ("triton" on the CPU runs under TRITON_INTERPRET=1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from splitspec_kernels.paged_attention import (
    paged_attention_reference,
    paged_attention_triton,
    write_kv_cache_reference,
    write_kv_cache_triton,
)
from splitspec_kernels.rejection_sampling import rejection_sample_reference, rejection_sample_triton
from splitspec_kernels.rms_norm import add_rms_norm_reference, add_rms_norm_triton, rms_norm_reference, rms_norm_triton
from splitspec_kernels.rotary import rotate_heads_reference, rotate_heads_triton
from splitspec_kernels.triton_support import interpreting, triton_available

KERNEL_BACKENDS = ("auto", "torch", "triton")


class KernelUnavailable(ValueError):
    """The requested kernel backend cannot run here; the message says why and what to do."""


@dataclass(frozen=True)
class Kernels:
    name: str  # "torch" or "triton"
    paged_attention: Callable
    write_kv_cache: Callable
    rejection_sample: Callable
    rms_norm: Callable
    add_rms_norm: Callable
    rotate_heads: Callable


REFERENCE = Kernels(
    "torch",
    paged_attention_reference,
    write_kv_cache_reference,
    rejection_sample_reference,
    rms_norm_reference,
    add_rms_norm_reference,
    rotate_heads_reference,
)
TRITON = Kernels(
    "triton",
    paged_attention_triton,
    write_kv_cache_triton,
    rejection_sample_triton,
    rms_norm_triton,
    add_rms_norm_triton,
    rotate_heads_triton,
)


def select_kernels(backend: str, device: torch.device | str) -> Kernels:
    device = torch.device(device)
    if backend not in KERNEL_BACKENDS:
        raise KernelUnavailable(f"kernel backend must be one of {', '.join(KERNEL_BACKENDS)}, got {backend!r}")
    if backend == "auto":
        backend = "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "torch":
        return REFERENCE
    if not triton_available():
        raise KernelUnavailable("kernel backend 'triton' needs Triton: pip install triton")
    if device.type == "cpu" and not interpreting():
        raise KernelUnavailable(
            "kernel backend 'triton' on the CPU runs only under Triton's interpreter: set TRITON_INTERPRET=1 "
            "(slow; meant for tests) or use the 'torch' backend"
        )
    return TRITON
