"""Our `kernels` package must not look like Hugging Face's `kernels` to transformers."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

import kernels


def _hf_kernels_installed() -> bool:
    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(_hf_kernels_installed(), reason="Hugging Face's kernels distribution is installed here")
def test_transformers_does_not_take_this_package_for_hub_kernels() -> None:
    from transformers.utils.import_utils import is_kernels_available

    assert Path(kernels.__file__).parent.name == "kernels"
    assert not is_kernels_available()
