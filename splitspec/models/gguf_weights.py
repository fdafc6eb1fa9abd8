"""A GGUF file's 4-bit blocks, read as shipped for `quantization="gguf"`.

GGUF's Q4_0 and Q4_1 store each row in blocks of 32 weights: a float16 scale d (and, Q4_1, a float16
minimum m) and 32 four-bit values q, the weight being d * (q - 8) (Q4_0) or d * q + m (Q4_1). Both
are the "int4" layout of splitspec.models.quantized_linear (scale d, zero 0 or m + 8 d), so the four
bits are used as they are; the kernel holds d and the zero in bfloat16. Other types (Q8_0, the
K-quants, floats) are not read here: their projections are quantized from the float checkpoint
instead (see LlamaRunner's loading).

llama.cpp's converter reorders the rows of attn_q and attn_k for its rotary layout; they are put
back in the checkpoint's order, as transformers does when it loads a GGUF.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from splitspec.errors import SplitspecError

_PROJECTIONS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK = 32


@dataclass
class Int4Blocks:
    """A weight [out, in] as (q - 8) * scales + zeros per group of 32 input columns."""

    q: torch.Tensor  # [out, in] uint8, 0..15
    scales: torch.Tensor  # [out, in / 32] float32
    zeros: torch.Tensor  # [out, in / 32] float32

    @staticmethod
    def cat(parts: list[Int4Blocks]) -> Int4Blocks:
        return Int4Blocks(*(torch.cat([getattr(p, f) for p in parts]) for f in ("q", "scales", "zeros")))

    def dequantized(self) -> torch.Tensor:
        out, width = self.q.shape
        groups = self.q.float().reshape(out, width // _BLOCK, _BLOCK) - 8
        return (groups * self.scales[..., None] + self.zeros[..., None]).reshape(out, width)


def _decode(blocks: np.ndarray, kind: str) -> Int4Blocks:
    """blocks: [rows, bytes per row] of Q4_0 or Q4_1."""
    rows = blocks.shape[0]
    size = 18 if kind == "Q4_0" else 20
    raw = blocks.reshape(rows, -1, size)
    d = raw[..., :2].copy().view(np.float16).astype(np.float32)[..., 0]
    m = raw[..., 2:4].copy().view(np.float16).astype(np.float32)[..., 0] if kind == "Q4_1" else np.zeros_like(d)
    packed = raw[..., size - 16 :]
    q = np.concatenate([packed & 0x0F, packed >> 4], axis=-1).reshape(rows, -1)
    scales = torch.from_numpy(d)
    zeros = torch.from_numpy(m) + 8 * scales if kind == "Q4_1" else torch.zeros_like(scales)
    return Int4Blocks(torch.from_numpy(q.astype(np.uint8)), scales, zeros)


def _unrotated_rows(rows: int, heads: int) -> torch.Tensor:
    """The row order that undoes llama.cpp's reordering of a q or k projection with `heads` heads."""
    index = torch.arange(rows)
    return index.reshape(heads, rows // heads // 2, 2).transpose(1, 2).reshape(rows)


def read_int4_blocks(gguf_path: Path, config) -> dict[str, Int4Blocks]:
    """The Q4_0/Q4_1 projections of a Llama-family GGUF under the checkpoint's tensor names
    (model.layers.{i}.self_attn.q_proj.weight, ...); projections of other types are left out."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(gguf_path))
    except (OSError, ValueError) as exc:
        raise SplitspecError(f"cannot read {gguf_path} as GGUF: {exc}") from None
    q_heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or q_heads
    found: dict[str, Int4Blocks] = {}
    for tensor in reader.tensors:
        parts = tensor.name.split(".")
        kind = tensor.tensor_type.name
        if len(parts) != 4 or parts[0] != "blk" or parts[2] not in _PROJECTIONS or kind not in ("Q4_0", "Q4_1"):
            continue
        blocks = _decode(np.asarray(tensor.data), kind)
        heads = {"attn_q": q_heads, "attn_k": kv_heads}.get(parts[2])
        if heads is not None:
            order = _unrotated_rows(blocks.q.shape[0], heads)
            blocks = Int4Blocks(blocks.q[order], blocks.scales[order], blocks.zeros[order])
        found[f"model.layers.{parts[1]}.{_PROJECTIONS[parts[2]]}.weight"] = blocks
    return found


def gguf_file_of(checkpoint: Path) -> Path:
    """The GGUF a checkpoint was converted from: the bundled default model's, or the one *.gguf file
    in the checkpoint's directory."""
    from splitspec.default_model import bundled_gguf_path, default_model_dir

    if checkpoint.resolve() == default_model_dir().resolve():
        return bundled_gguf_path()
    files = sorted(checkpoint.glob("*.gguf"))
    if len(files) != 1:
        raise SplitspecError(
            f'quantization="gguf" reads the GGUF file a checkpoint was converted from: the default model\'s, or '
            f"the one *.gguf file in the checkpoint's directory; {checkpoint} has {len(files)}"
        )
    return files[0]
