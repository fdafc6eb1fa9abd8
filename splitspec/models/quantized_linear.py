"""Weight-only quantized projections, for a runner loaded with `quantization=` (vLLM's argument).

- "int8": each output row's weights rounded to int8 with one scale per row (symmetric).
- "int4": weights in groups of 32 input columns, each group 16 levels between its own min and max.
- "gguf": a GGUF checkpoint's own blocks (splitspec.models.gguf_weights): Q4_0 and Q4_1 are groups of
  32 with a scale (and a minimum), exactly the "int4" layout, so they run as shipped.
- "fp8": float8_e4m3fn weights with one scale per output row, and each activation row quantized to it
  with its own scale as it arrives (vLLM's dynamic FP8, per token): torch._scaled_mm, the FP8 tensor
  cores on CUDA (H100 and later). A scale per row, not per batch, keeps rows independent.

The products are PyTorch's own weight-only kernels (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`):
they read a quarter or an eighth of float32's bytes, which is what a memory-bound decode step pays
for. They take bfloat16 activations (their float32 paths are reference loops, tens of times slower),
so a quantized projection casts its input to bfloat16 and its output back; the rest of the model keeps
its dtype. In the int8 and int4 products each row's result does not depend on the other rows (tests
check it; `_scaled_mm` differs in the last bit), and a quantized runner on the CPU attends each row as if alone
(splitspec_kernels.paged_attention.paged_attention_rowwise), so a verify pass of K+1 rows computes
what K+1 one-row decode steps would: speculation stays lossless against the quantized target.
"""

from __future__ import annotations

import torch

GROUP_SIZE = 32
"""Input columns per int4 group: GGUF's block of 32, which the CPU kernel takes as it is."""
_MID_LEVEL = 8
"""The int4 kernels read a group as (q - 8) * scale + zero."""
ACTIVATION_DTYPE = torch.bfloat16


class Int8Linear:
    """y = x @ (q * scale[:, None]).T + bias, q int8 [out, in], one scale per output row."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.out_features, self.in_features = q.shape
        self.q = q.contiguous()
        self.scales = scales.to(ACTIVATION_DTYPE)
        self.bias = bias

    @classmethod
    def quantize(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Int8Linear:
        scales = weight.float().abs().amax(dim=1).clamp(min=1e-12) / 127
        q = torch.round(weight.float() / scales[:, None]).clamp(-127, 127).to(torch.int8)
        return cls(q, scales, bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int8pack_mm(x.to(ACTIVATION_DTYPE), self.q, self.scales).to(x.dtype)
        return y if self.bias is None else y + self.bias


class Int4Linear:
    """y = x @ W.T + bias, where W[n, g*32 + j] = (q[n, g*32 + j] - 8) * scale[n, g] + zero[n, g] and q in 0..15."""

    def __init__(
        self, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bias: torch.Tensor | None = None
    ) -> None:
        """q [out, in] integers 0..15; scales and zeros [out, in / 32]."""
        self.out_features, self.in_features = q.shape
        if self.in_features % GROUP_SIZE or self.out_features % 16:
            raise ValueError(
                f"int4 weights need a multiple of {GROUP_SIZE} input columns and of 16 output rows, got "
                f"[{self.out_features}, {self.in_features}]"
            )
        if q.device.type != "cpu":
            raise ValueError("int4 weights run on the CPU only")
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)
        self.scales_and_zeros = torch.stack([scales.t(), zeros.t()], dim=-1).to(ACTIVATION_DTYPE).contiguous()
        self.bias = bias

    @classmethod
    def quantize(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Int4Linear:
        """Each group of 32 spread over 16 levels from its minimum to its maximum."""
        out_features, in_features = weight.shape
        groups = weight.float().reshape(out_features, in_features // GROUP_SIZE, GROUP_SIZE)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)
        scales = ((high - low) / 15).clamp(min=1e-12)
        q = torch.round((groups - low[..., None]) / scales[..., None]).clamp(0, 15)
        return cls(q.reshape(out_features, in_features), scales, low + _MID_LEVEL * scales, bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.to(ACTIVATION_DTYPE), self.packed, GROUP_SIZE, self.scales_and_zeros
        ).to(x.dtype)
        return y if self.bias is None else y + self.bias


class Fp8Linear:
    """y = (x / sx) @ (W / sw).T * sx * sw + bias in float8_e4m3fn, sw per output row, sx per input row."""

    FP8 = torch.float8_e4m3fn
    FP8_MAX = 448.0

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.out_features, self.in_features = q.shape
        if self.in_features % 16 or self.out_features % 16:
            raise ValueError(
                f"fp8 weights need multiples of 16 rows and columns, got [{self.out_features}, {self.in_features}]"
            )
        self.q_t = q.contiguous().t()  # [in, out], column-major, as _scaled_mm takes its second operand
        self.scales = scales.float().reshape(1, -1)
        self.bias = bias

    @classmethod
    def quantize(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Fp8Linear:
        scales = weight.float().abs().amax(dim=1).clamp(min=1e-12) / cls.FP8_MAX
        return cls((weight.float() / scales[:, None]).to(cls.FP8), scales, bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        row_scales = x.float().abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / self.FP8_MAX
        q = (x.float() / row_scales).to(self.FP8)
        y = torch._scaled_mm(q, self.q_t, scale_a=row_scales, scale_b=self.scales, out_dtype=ACTIVATION_DTYPE)
        y = y.to(x.dtype)
        return y if self.bias is None else y + self.bias


def quantize_linear(
    weight: torch.Tensor, bias: torch.Tensor | None, quantization: str
) -> Int8Linear | Int4Linear | Fp8Linear:
    """A float weight [out, in] quantized as `quantization` says ("int8", "int4" or "fp8")."""
    if quantization == "int8":
        return Int8Linear.quantize(weight, bias)
    if quantization == "int4":
        return Int4Linear.quantize(weight, bias)
    if quantization == "fp8":
        return Fp8Linear.quantize(weight, bias)
    raise ValueError(f"cannot quantize a float weight as {quantization!r}")
