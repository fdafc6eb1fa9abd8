"""The fused RMS-norm and rotary Triton kernels against their PyTorch references (CPU: TRITON_INTERPRET=1)."""

from __future__ import annotations

import pytest
import torch

from splitspec_kernels.rms_norm import add_rms_norm_reference, add_rms_norm_triton, rms_norm_reference, rms_norm_triton
from splitspec_kernels.rotary import rotate_heads_reference, rotate_heads_triton
from splitspec_kernels.triton_support import interpreting, triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="Triton is not installed")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# the norm's sum runs in another order than torch's mean: the normalised element and its product with the
# weight may each round one ulp apart
NORM_TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_rounded_alike(got: torch.Tensor, want: torch.Tensor) -> None:
    """Bit for bit, except where Triton's interpreter cannot be: it truncates fp32 to bf16 instead of
    rounding to nearest (3.6-3.9), so there each rounding may land one ulp lower. On a GPU the kernels
    round to nearest; tests/core/test_gpu.py checks them bit for bit there."""
    if got.dtype == torch.bfloat16 and interpreting():
        torch.testing.assert_close(got, want, rtol=1.6e-2, atol=1.6e-2)
    else:
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 64), (7, 576), (3, 100), (2, 3, 32)])
def test_rms_norm_matches_reference(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(shape[-1])
    hidden = shape[-1]
    x = (3 * torch.randn(shape, generator=generator)).to(dtype)
    weight = torch.randn(hidden, generator=generator).to(dtype)
    want = rms_norm_reference(x, weight, 1e-5)
    got = rms_norm_triton(x, weight, 1e-5)
    assert got.dtype == want.dtype and got.shape == want.shape
    tol = NORM_TOLERANCE[dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm_writes_the_exact_sum_and_its_norm(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(5, 320, generator=generator).to(dtype)
    delta = torch.randn(5, 320, generator=generator).to(dtype)
    weight = torch.randn(320, generator=generator).to(dtype)
    want_total, want_normed = add_rms_norm_reference(x, delta, weight, 1e-6)
    got_total, got_normed = add_rms_norm_triton(x, delta, weight, 1e-6)
    assert_rounded_alike(got_total, want_total)  # one rounding of the sum, as torch's add
    tol = NORM_TOLERANCE[dtype]
    torch.testing.assert_close(got_normed, want_normed, rtol=tol, atol=tol)


def test_rms_norm_keeps_the_references_dtype_promotion() -> None:
    """An fp32 weight over bf16 activations gives fp32, as `weight * x` does in torch."""
    x = torch.randn(2, 64).to(torch.bfloat16)
    weight = torch.randn(64)
    got, want = rms_norm_triton(x, weight, 1e-5), rms_norm_reference(x, weight, 1e-5)
    assert got.dtype == want.dtype == torch.float32
    tol = NORM_TOLERANCE[torch.bfloat16]  # the normalised row is rounded to bf16 before the weight
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


# the kernel rounds each element once, the reference each product and then the sum: one ulp apart at most
# (inputs here are up to about 4: a bf16 ulp there is 2 ** -6)
ROTARY_TOLERANCE = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3.2e-2}


def _angles(positions: torch.Tensor, head_dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat((freqs, freqs), dim=-1)[:, None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("q_heads,kv_heads,head_dim", [(4, 2, 64), (3, 1, 48), (9, 3, 32)])
def test_rotate_heads_matches_reference(dtype: torch.dtype, q_heads: int, kv_heads: int, head_dim: int) -> None:
    generator = torch.Generator().manual_seed(q_heads)
    tokens = 6
    qkv = torch.randn(tokens, (q_heads + 2 * kv_heads) * head_dim, generator=generator).to(dtype)
    cos, sin = _angles(torch.tensor([0, 1, 5, 17, 300, 4095]), head_dim, dtype)
    want, got = qkv.clone(), qkv.clone()
    rotate_heads_reference(want, cos, sin, q_heads + kv_heads, head_dim)
    rotate_heads_triton(got, cos, sin, q_heads + kv_heads, head_dim)
    values = (q_heads + kv_heads) * head_dim
    assert torch.equal(got[:, values:], qkv[:, values:]), "the value heads must stay as they were"
    tol = ROTARY_TOLERANCE[dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
