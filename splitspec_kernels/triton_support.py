"""Triton where it is installed; `triton` and `tl` are None where it is not (the references still work)."""

from __future__ import annotations

import os

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only install without Triton
    triton = None
    tl = None


def triton_available() -> bool:
    return triton is not None


def interpreting() -> bool:
    """TRITON_INTERPRET=1: Triton kernels run on the CPU through Triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
