"""The device-tuned Linear computes x @ W.T + b for any number of rows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from splitspec.models.linear import EXACT_ROWS, Linear, packs, padded_rows

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("rows", [1, 2, 6, 9, 17, 64, 301])
def test_matches_f_linear(dtype: torch.dtype, with_bias: bool, rows: int) -> None:
    generator = torch.Generator().manual_seed(rows)
    weight = torch.randn(96, 80, generator=generator).to(dtype)
    bias = torch.randn(96, generator=generator).to(dtype) if with_bias else None
    x = torch.randn(rows, 80, generator=generator).to(dtype)
    got = Linear(weight, bias)(x)
    want = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    assert got.shape == (rows, 96) and got.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype] * 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_weights_are_held_in_onednn_s_packed_layout(dtype: torch.dtype) -> None:
    """The few-row speed-up comes from oneDNN's packed weight; the products above go through it."""
    if not packs(dtype):
        pytest.skip(f"oneDNN cannot pack {dtype} on this CPU")
    linear = Linear(torch.randn(8, 4).to(dtype))
    assert linear.packed and linear.weight.is_mkldnn


def test_float64_falls_back_to_f_linear() -> None:
    weight, x = torch.randn(8, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    linear = Linear(weight)
    assert not linear.packed
    assert torch.equal(linear(x), F.linear(x, weight))


def test_row_counts_are_exact_up_to_16_then_padded_by_at_most_an_eighth() -> None:
    assert [padded_rows(rows) for rows in range(1, EXACT_ROWS + 1)] == list(range(1, EXACT_ROWS + 1))
    for rows in range(EXACT_ROWS + 1, 20_000):
        padded = padded_rows(rows)
        assert rows <= padded <= rows * 1.125, rows
        assert padded_rows(padded) == padded, rows


def test_a_long_context_s_row_counts_fall_into_a_bounded_number_of_steps() -> None:
    """oneDNN caches one primitive per row count; a verifier sees every count up to its longest pass."""
    assert len({padded_rows(rows) for rows in range(1, 8193)}) <= EXACT_ROWS + 8 * 9
