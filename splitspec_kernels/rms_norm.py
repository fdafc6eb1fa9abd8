"""RMS normalisation, alone and fused with the residual add before it, in one kernel per call.

Unfused, a norm is eight small kernels (upcast, square, mean, add, rsqrt, multiply, downcast, weight)
and the residual add one more; in a CUDA graph of an 8B model's verify pass on an H100 these small
kernels took about as long as reading the attention weights. The Triton kernels compute what the
references compute, in the same dtypes: the sum in the activations' dtype, the norm in fp32, the
normalised row rounded to the activations' dtype before the weight multiplies it.
"""

from __future__ import annotations

import torch

from splitspec_kernels.triton_support import tl, triton


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def add_rms_norm_reference(
    x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + delta, its RMS norm): a residual stream's update and the next sublayer's input."""
    total = x + delta
    return total, rms_norm_reference(total, weight, eps)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _launch(x, None, weight, eps)[1]


def add_rms_norm_triton(
    x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch(x, delta, weight, eps)


def _launch(
    x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One program per row (the last dimension); with delta, the sum is written as well."""
    shape, hidden = x.shape, x.shape[-1]
    x = x.reshape(-1, hidden).contiguous()
    normed = torch.empty(x.shape, dtype=torch.result_type(weight, x), device=x.device)
    total = torch.empty_like(x) if delta is not None else x
    _rms_norm_kernel[(x.shape[0],)](
        x, delta.reshape(-1, hidden).contiguous() if delta is not None else x, weight, total, normed,
        hidden, eps, HAS_DELTA=delta is not None, BLOCK=triton.next_power_of_2(hidden),
    )  # fmt: skip
    return total.view(shape), normed.view(shape)


if triton is not None:

    @triton.jit
    def _rms_norm_kernel(x_ptr, delta_ptr, weight_ptr, total_ptr, out_ptr, hidden, eps, HAS_DELTA: tl.constexpr,
                         BLOCK: tl.constexpr):  # fmt: skip
        row = tl.program_id(0).to(tl.int64) * hidden
        cols = tl.arange(0, BLOCK)
        ok = cols < hidden
        x = tl.load(x_ptr + row + cols, mask=ok, other=0.0)
        if HAS_DELTA:
            x = (x.to(tl.float32) + tl.load(delta_ptr + row + cols, mask=ok, other=0.0).to(tl.float32)).to(
                total_ptr.dtype.element_ty
            )
            tl.store(total_ptr + row + cols, x, mask=ok)
        x32 = x.to(tl.float32)
        normed = (x32 * tl.rsqrt(tl.sum(x32 * x32, axis=0) / hidden + eps)).to(x_ptr.dtype.element_ty)
        weight = tl.load(weight_ptr + cols, mask=ok, other=0.0)
        out = weight.to(tl.float32) * normed.to(tl.float32)
        tl.store(out_ptr + row + cols, out.to(out_ptr.dtype.element_ty), mask=ok)
