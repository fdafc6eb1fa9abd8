"""Linear projections tuned for the few-row products of decode and verify passes.

On the CPU, PyTorch's default fp32 matmul goes to MKL, which on this project's reference machine (AMD
EPYC) runs a product with 2-8 rows at several times the cost of a one-row product, so a verify pass of K+1
tokens cost far more than a decode step. oneDNN's linear, with the weight packed once for a few-row
batch, runs 1-16 rows at about the cost of one: the weight is streamed once either way
(`python benchmarks/pass_cost.py`; docs/benchmarks.md, "What changed the numbers"). Elsewhere (CUDA, or a PyTorch
built without oneDNN) the weight stays as it is and F.linear is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# oneDNN picks its packed layout for this many rows; 8 covers a verify pass of K+1 <= 8 tokens and
# measured no slower than other choices for one-row decode and long prefill of the per-layer weights.
PACKED_ROWS_HINT = 8
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def packs(dtype: torch.dtype) -> bool:
    """Whether oneDNN can pack a CPU weight of this dtype here: bfloat16 needs a CPU that multiplies it
    natively (AVX512-BF16 or AVX-NE-CONVERT); oneDNN refuses to pack it elsewhere."""
    if dtype not in _ONEDNN_DTYPES or not onednn_available():
        return False
    return dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()


class Linear:
    """y = x @ weight.T + bias for a [out, in] weight, with the weight laid out for the device."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, rows_hint: int = PACKED_ROWS_HINT
    ) -> None:
        self.out_features, self.in_features = weight.shape
        self.bias = bias
        self.packed = weight.device.type == "cpu" and packs(weight.dtype)
        if self.packed:
            self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows_hint)
        else:
            self.weight = weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [None], "")
        return F.linear(x, self.weight, self.bias)
