"""Kernels of the verify pass, each a Triton kernel beside a plain-PyTorch reference with the same
signature (`<name>_triton` / `<name>_reference`); `splitspec_kernels.dispatch` picks one per device.

Not `kernels`: that import name belongs to Hugging Face's library, which transformers imports
(tests/entrypoints/test_import_names.py).
"""
