"""Linear projections tuned for the few-row products of decode and verify passes.

On the CPU, PyTorch's default fp32 matmul goes to MKL, which on this project's reference machine (AMD
EPYC) runs a product with 2-8 rows at several times the cost of a one-row product, so a verify pass of K+1
tokens cost far more than a decode step. oneDNN's linear, with the weight packed once for a few-row
batch, runs 1-16 rows at about the cost of one: the weight is streamed once either way
(`python benchmarks/pass_cost.py`; docs/benchmarks.md, "What changed the numbers"). Elsewhere (CUDA, or a PyTorch
built without oneDNN) the weight stays as it is and F.linear is used.

oneDNN builds and caches a primitive for each row count it sees (up to 1,024 per process), and a serving
verifier sees nearly every count between 1 and its longest prefill, so its resident memory kept growing
for thousands of requests (docs/benchmarks.md, "The soak"). Row counts above 16 are therefore padded up
to one of eight steps per power of two: at most 12.5% more rows, and about a hundred primitives per
weight for passes up to 8,192 tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# oneDNN picks its packed layout for this many rows; 8 covers a verify pass of K+1 <= 8 tokens and
# measured no slower than other choices for one-row decode and long prefill of the per-layer weights.
PACKED_ROWS_HINT = 8
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)
EXACT_ROWS = 16
STEPS_PER_OCTAVE = 8


def padded_rows(rows: int) -> int:
    """The row count a product of `rows` rows runs at: itself up to EXACT_ROWS, then the next multiple of
    1/STEPS_PER_OCTAVE of its power of two."""
    if rows <= EXACT_ROWS:
        return rows
    step = (1 << (rows.bit_length() - 1)) // STEPS_PER_OCTAVE
    return -(-rows // step) * step


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def packs(dtype: torch.dtype) -> bool:
    """Whether oneDNN can pack a CPU weight of this dtype here: bfloat16 needs a CPU that multiplies it
    natively (AVX512-BF16 or AVX-NE-CONVERT); oneDNN refuses to pack it elsewhere."""
    if dtype not in _ONEDNN_DTYPES or not onednn_available():
        return False
    return dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()


class Linear:
    """y = x @ weight.T + bias for a [out, in] weight and an x of [rows, in], with the weight laid out for
    the device."""

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
            rows = x.shape[0]
            padded = padded_rows(rows)
            if padded != rows:
                x = F.pad(x, (0, 0, 0, padded - rows))
            y = torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [None], "")
            return y if padded == rows else y[:rows]
        return F.linear(x, self.weight, self.bias)
