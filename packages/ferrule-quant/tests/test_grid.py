"""Per-row grids: the min/max grid is the core's, MSE search never loses to it."""

from __future__ import annotations

import pytest
import torch

from ferrule_core.format.grid import fit_grid
from ferrule_quant.grid import dequantize_from_grid, find_params, quantize_to_grid, round_scale


def heavy_tailed(rows: int = 64, cols: int = 128, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen) * 0.02
    outliers = torch.rand(rows, cols, generator=gen) < 0.01
    return torch.where(outliers, w * 20, w)  # a few outliers per row stretch min/max


def row_error(w, scale, zero, bits, norm):
    codes = quantize_to_grid(w, scale, zero, (1 << bits) - 1)
    return (dequantize_from_grid(codes, scale, zero) - w).abs().pow(norm).sum(dim=1)


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_the_min_max_grid_is_the_cores(bits, sym):
    w = heavy_tailed()
    scale, zero = find_params(w, bits, sym)
    core_scale, core_zero = fit_grid(w, bits, sym)
    assert scale.dtype == zero.dtype == torch.float32
    assert torch.equal(scale, core_scale) and torch.equal(zero, core_zero.float())


@pytest.mark.parametrize("scale_dtype", [None, torch.float16])
@pytest.mark.parametrize("norm", [2.4, 2.0])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_mse_search_never_loses_to_min_max_per_row(bits, sym, norm, scale_dtype):
    w = heavy_tailed(seed=bits)
    minmax = find_params(w, bits, sym, scale_dtype=scale_dtype)
    searched = find_params(w, bits, sym, mse=True, norm=norm, scale_dtype=scale_dtype)
    before = row_error(w, *minmax, bits, norm)
    after = row_error(w, *searched, bits, norm)
    assert bool((after <= before).all())
    assert bool((after < 0.95 * before).any())  # outliers make shrinking worth it somewhere
    assert torch.equal(searched[1], minmax[1])  # shrinking keeps the zero point
    assert bool((searched[0] <= minmax[0]).all())
    assert bool((searched[0] > (1 - 0.8) * minmax[0]).all())


def test_codes_stay_on_the_grid_and_round_trip():
    w = heavy_tailed()
    for bits, sym in ((4, True), (3, False)):
        maxq = (1 << bits) - 1
        scale, zero = find_params(w, bits, sym)
        codes = quantize_to_grid(w, scale, zero, maxq)
        assert codes.dtype == torch.int32
        assert int(codes.min()) >= 0 and int(codes.max()) <= maxq
        error = (dequantize_from_grid(codes, scale, zero) - w).abs()
        # asymmetric grids cover [min, max]; symmetric ones may clip the positive end by a step
        assert bool((error <= scale[:, None] * (0.5 if not sym else 1.0) + 1e-7).all())


def test_a_non_negative_row_gets_zero_point_zero_and_works():
    # The range always contains 0, so asymmetric rows of non-negative weights get zero 0
    # (valid in v2; the v1 'gptq' format cannot store it for non-wrapping readers).
    w = torch.rand(4, 32) + 0.1
    scale, zero = find_params(w, 4, sym=False)
    assert bool((zero == 0).all())
    codes = quantize_to_grid(w, scale, zero, 15)
    assert bool(((dequantize_from_grid(codes, scale, zero) - w).abs() <= scale[:, None] / 2).all())


def test_all_zero_rows_get_a_usable_grid():
    w = torch.zeros(3, 16)
    for mse in (False, True):
        scale, zero = find_params(w, 4, sym=False, mse=mse)
        assert bool((scale > 0).all())
        assert bool(
            (dequantize_from_grid(quantize_to_grid(w, scale, zero, 15), scale, zero) == 0).all()
        )


def test_round_scale_makes_scales_exact_in_the_storage_dtype():
    scale = torch.tensor([1e-3, 0.0123456, 3e-9, 1e6])
    rounded = round_scale(scale, torch.float16)
    assert torch.equal(rounded.half().float(), rounded)
    assert bool((rounded > 0).all()) and bool(torch.isfinite(rounded).all())
    assert round_scale(scale, None) is scale


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="2-D"):
        find_params(torch.zeros(8), 4, True)
    with pytest.raises(ValueError, match="max_shrink"):
        find_params(torch.zeros(2, 8), 4, True, mse=True, max_shrink=0)
