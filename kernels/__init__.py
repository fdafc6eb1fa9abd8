"""Kernels of the verify pass, each a Triton kernel beside a plain-PyTorch reference with the same
signature (`<name>_triton` / `<name>_reference`); `kernels.dispatch` picks one per device.

Hugging Face publishes an unrelated distribution whose import name is also `kernels`; transformers
detects it by distribution metadata, which this project does not provide, so this package never
turns that probe on (tests/test_kernels_package.py checks it).
"""
