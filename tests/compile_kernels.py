"""Compile every Triton kernel of the project for a CUDA GPU, on a machine without one (run in a child
process: Triton's interpreter, which the tests turn on, replaces compilation).

The interpreter runs a kernel as Python and forgives what the compiler refuses (a loop-carried variable
that changes dtype, for one), so kernels that pass every CPU test could still fail to build for a GPU.
Usage: python tests/compile_kernels.py [ARCH ...]   (default 90: Hopper) -> one line per kernel build
"""

from __future__ import annotations

import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from splitspec_kernels.paged_attention import _merge_splits_kernel, _paged_attention_kernel, _write_kv_kernel
from splitspec_kernels.rejection_sampling import _rejection_kernel
from splitspec_kernels.rms_norm import _rms_norm_kernel
from splitspec_kernels.rotary import _rotate_heads_kernel


def _builds(dtype: str) -> list[tuple[str, object, dict[str, str], dict[str, object]]]:
    """(name, kernel, signature, constexprs) as the launchers call them for one cache dtype."""
    pointer = f"*{dtype}"
    attention = {
        **dict.fromkeys(["q_ptr", "k_cache_ptr", "v_cache_ptr", "out_ptr"], pointer),
        "partial_ptr": "*fp32",
        **dict.fromkeys(["block_tables_ptr", "seq_lens_ptr", "query_start_ptr", "tree_bits_ptr"], "*i64"),
        "scale": "fp32",
        **dict.fromkeys(["table_stride", "block_size", "group_size", "q_heads", "window"], "i32"),
        **dict.fromkeys(["q_token_stride", "q_head_stride", "kv_slot_stride"], "i32"),
        **dict.fromkeys(
            ["HEAD_DIM", "BLOCK_D", "BLOCK_M", "BLOCK_N", "NUM_SPLITS", "PRECISION", "DOT_IN_FP32", "HAS_TREES"],
            "constexpr",
        ),
    }
    merge = {
        "partial_ptr": "*fp32",
        "out_ptr": pointer,
        **dict.fromkeys(["out_token_stride", "out_head_stride"], "i32"),
        **dict.fromkeys(["HEAD_DIM", "BLOCK_D", "NUM_SPLITS", "BLOCK_S"], "constexpr"),
    }
    norm = {
        **dict.fromkeys(["x_ptr", "delta_ptr", "weight_ptr", "total_ptr", "out_ptr"], pointer),
        "hidden": "i32",
        "eps": "fp32",
        **dict.fromkeys(["HAS_DELTA", "BLOCK"], "constexpr"),
    }
    rotary = {
        **dict.fromkeys(["qkv_ptr", "cos_ptr", "sin_ptr"], pointer),
        **dict.fromkeys(["row_stride", "angle_stride", "num_heads", "head_dim", "half"], "i32"),
        **dict.fromkeys(["BLOCK_H", "BLOCK_HALF"], "constexpr"),
    }
    write = {
        **dict.fromkeys(["key_ptr", "value_ptr", "key_cache_ptr", "value_cache_ptr"], pointer),
        "slot_ptr": "*i64",
        **dict.fromkeys(["token_stride", "head_stride"], "i32"),
        **dict.fromkeys(["HEAD_DIM", "BLOCK_D"], "constexpr"),
    }
    precision = "ieee" if dtype == "fp32" else "tf32"
    return [
        *(
            (
                f"paged attention {dtype}, {splits} part(s)" + (", token trees" if trees else ""),
                _paged_attention_kernel,
                attention,
                {
                    "HEAD_DIM": 64,
                    "BLOCK_D": 64,
                    "BLOCK_M": 16,
                    "BLOCK_N": 32,
                    "NUM_SPLITS": splits,
                    "PRECISION": precision,
                    "DOT_IN_FP32": False,
                    "HAS_TREES": trees,
                },  # fmt: skip
            )
            for splits in (1, 8)
            for trees in (False, True)
        ),
        (
            f"split merge {dtype}",
            _merge_splits_kernel,
            merge,
            {"HEAD_DIM": 64, "BLOCK_D": 64, "NUM_SPLITS": 8, "BLOCK_S": 8},
        ),  # fmt: skip
        *(
            (f"RMS norm {dtype}, add {add}", _rms_norm_kernel, norm, {"HAS_DELTA": add, "BLOCK": 1024})
            for add in (0, 1)
        ),
        (f"rotary {dtype}", _rotate_heads_kernel, rotary, {"BLOCK_H": 64, "BLOCK_HALF": 64}),
        (f"KV-cache write {dtype}", _write_kv_kernel, write, {"HEAD_DIM": 64, "BLOCK_D": 64}),
    ]


def _rejection() -> tuple[str, object, dict[str, str], dict[str, object]]:
    names = [
        "target_ptr", "target_noise_ptr", "residual_noise_ptr", "row_start_ptr", "num_drafts_ptr", "draft_ptr",
        "greedy_ptr", "q_ids_ptr", "q_probs_ptr", "q_count_ptr", "uniform_ptr", "accepted_ptr", "tokens_ptr",
        "vocab", "max_drafts", "q_width", "BLOCK_V", "BLOCK_Q",
    ]  # fmt: skip
    types = ["*fp64"] * 3 + ["*i64"] * 3 + ["*i8", "*i64", "*fp64", "*i64", "*fp64", "*i64", "*i64"]
    types += ["i32"] * 3 + ["constexpr"] * 2
    return "rejection sampling", _rejection_kernel, dict(zip(names, types)), {"BLOCK_V": 1024, "BLOCK_Q": 4}


def main(arches: list[int]) -> int:
    builds = _builds("fp32") + _builds("bf16") + _builds("fp16") + [_rejection()]
    failed = 0
    for arch in arches:
        for name, kernel, signature, constexprs in builds:
            try:
                compiled = triton.compile(
                    ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                    target=GPUTarget("cuda", arch, 32),
                )
                print(f"sm_{arch} {name}: ok ({len(compiled.asm['cubin'])} bytes of cubin)")
            except Exception as exc:  # the compiler's message is the point of this script
                failed += 1
                print(f"sm_{arch} {name}: FAILED\n{exc}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main([int(a) for a in sys.argv[1:]] or [90]))
