"""Rotary position embedding of the query and key heads, in place in the fused QKV projection's output.

The reference is the rotate-half formula (x * cos + rotate_half(x) * sin, five kernels per tensor,
each product rounded to the activations' dtype before the sum); the Triton kernel does both tensors
in one launch per pass and computes each element in fp32 with one rounding, so the two may differ by
one unit in the last place in half precision.
"""

from __future__ import annotations

import torch

from splitspec_kernels.triton_support import tl, triton


def rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [tokens, heads, head_dim]; cos, sin [tokens, 1, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def rotate_heads_reference(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int, head_dim: int
) -> None:
    """Rotate the first num_heads heads (the queries, then the keys) of each row of qkv [tokens, width]."""
    heads = qkv[:, : num_heads * head_dim].view(qkv.shape[0], num_heads, head_dim)
    heads.copy_(rotate_half(heads, cos, sin))


def rotate_heads_triton(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int, head_dim: int) -> None:
    if qkv.stride(-1) != 1:
        raise ValueError("rotate_heads_triton needs rows with unit column stride")
    half = head_dim // 2
    cos, sin = cos.reshape(qkv.shape[0], head_dim), sin.reshape(qkv.shape[0], head_dim)
    _rotate_heads_kernel[(qkv.shape[0],)](
        qkv, cos, sin, qkv.stride(0), cos.stride(0), num_heads, head_dim, half,
        BLOCK_H=triton.next_power_of_2(num_heads), BLOCK_HALF=triton.next_power_of_2(half),
    )  # fmt: skip


if triton is not None:

    @triton.jit
    def _rotate_heads_kernel(qkv_ptr, cos_ptr, sin_ptr, row_stride, angle_stride, num_heads, head_dim, half,
                             BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):  # fmt: skip
        token = tl.program_id(0).to(tl.int64)
        heads = tl.arange(0, BLOCK_H)
        j = tl.arange(0, BLOCK_HALF)
        ok = (heads < num_heads)[:, None] & (j < half)[None, :]
        first = token * row_stride + heads[:, None] * head_dim + j[None, :]
        x1 = tl.load(qkv_ptr + first, mask=ok, other=0.0)
        x2 = tl.load(qkv_ptr + first + half, mask=ok, other=0.0)
        angle = token * angle_stride + j
        cos1 = tl.load(cos_ptr + angle, mask=j < half, other=0.0).to(tl.float32)[None, :]
        sin1 = tl.load(sin_ptr + angle, mask=j < half, other=0.0).to(tl.float32)[None, :]
        cos2 = tl.load(cos_ptr + angle + half, mask=j < half, other=0.0).to(tl.float32)[None, :]
        sin2 = tl.load(sin_ptr + angle + half, mask=j < half, other=0.0).to(tl.float32)[None, :]
        a1, b1 = x1.to(tl.float32), x2.to(tl.float32)
        tl.store(qkv_ptr + first, (a1 * cos1 - b1 * sin1).to(qkv_ptr.dtype.element_ty), mask=ok)
        tl.store(qkv_ptr + first + half, (b1 * cos2 + a1 * sin2).to(qkv_ptr.dtype.element_ty), mask=ok)
