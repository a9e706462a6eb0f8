"""Per-row quantization grids for GPTQ and RTN: fitting, rounding to codes, dequantizing.

A grid is a scale and a zero point per row; ``x`` is stored as the code
``clamp(round(x / scale) + zero, 0, maxq)`` with ``maxq = 2**bits - 1`` and read back as
``(code - zero) * scale``. The min/max grid is :func:`ferrule_core.format.grid.fit_grid`
(the range always contains 0, symmetric grids have ``zero = 2**(bits-1)``).

The optional MSE search is the reference GPTQ ``Quantizer``'s: shrink the range by factors
``p = 1, 1 - 1/grid, ...`` down to ``1 - max_shrink`` (exclusive) and keep, per row, the grid
with the smallest ``sum |w - dq(w)|**norm``. Shrinking ``[p*min, p*max]`` scales the scale by
``p`` and leaves the zero point ``round(-min / scale)`` unchanged, so the candidates are
``p * scale`` with the min/max zero. ``p = 1`` is tried first and replaced only by a strictly
smaller error, so the search is never worse than the min/max grid in that measure.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ferrule_core.format.grid import fit_grid


def _per_row(values: Tensor, like: Tensor) -> Tensor:
    """A ``[rows]`` grid tensor against a ``[rows, cols]`` weight applies per row."""
    return values[:, None] if values.dim() == 1 and like.dim() == 2 else values


def round_codes(weight: Tensor, scale: Tensor, zero: Tensor, maxq: int) -> Tensor:
    """The codes of :func:`quantize_to_grid` as float32 (GPTQ's inner loop stays in float)."""
    scale, zero = _per_row(scale, weight), _per_row(zero, weight)
    return torch.clamp(torch.round(weight / scale) + zero, 0, maxq)


def quantize_to_grid(weight: Tensor, scale: Tensor, zero: Tensor, maxq: int) -> Tensor:
    """int32 codes ``clamp(round(weight / scale) + zero, 0, maxq)``.

    ``scale`` and ``zero`` of shape ``[rows]`` apply per row of a ``[rows, cols]`` weight;
    other shapes broadcast as usual (e.g. a ``[rows]`` column against ``[rows]`` grids).
    """
    return round_codes(weight, scale, zero, maxq).to(torch.int32)


def dequantize_from_grid(codes: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
    """``(codes - zero) * scale`` in float32 (broadcasting as :func:`quantize_to_grid`)."""
    scale, zero = _per_row(scale, codes), _per_row(zero, codes)
    return (codes.to(torch.float32) - zero.to(torch.float32)) * scale.to(torch.float32)


def round_scale(scale: Tensor, dtype: torch.dtype | None) -> Tensor:
    """``scale`` rounded to ``dtype`` (the checkpoint's scale dtype) and back to float32.

    Fitting with the stored precision makes what GPTQ optimises exactly what is saved. The
    result stays positive and finite: it is clamped to ``dtype``'s smallest positive
    (subnormal) value and its largest finite value.
    """
    if dtype is None:
        return scale
    info = torch.finfo(dtype)
    return scale.clamp(info.tiny * info.eps, info.max).to(dtype).to(torch.float32)


def find_params(
    weight: Tensor,
    bits: int,
    sym: bool,
    *,
    mse: bool = False,
    norm: float = 2.4,
    grid: int = 100,
    max_shrink: float = 0.8,
    scale_dtype: torch.dtype | None = None,
    min_zero: int = 0,
) -> tuple[Tensor, Tensor]:
    """Grid of each row of ``weight [rows, cols]``: ``(scale [rows] float32, zero [rows])``.

    ``zero`` holds integers as float32. ``mse=True`` searches shrunk ranges (module
    docstring); ``scale_dtype`` rounds every candidate scale to the precision it is stored in.
    """
    if weight.dim() != 2:
        raise ValueError(
            f"find_params expects a 2-D weight [rows, cols], got {tuple(weight.shape)}"
        )
    if mse and (grid <= 0 or not 0 < max_shrink <= 1):
        raise ValueError(
            f"MSE grid search needs grid > 0 and 0 < max_shrink <= 1, got grid={grid}, "
            f"max_shrink={max_shrink}; the reference uses grid=100, max_shrink=0.8"
        )
    w = weight.to(torch.float32)
    scale, zero = fit_grid(w, bits, sym, min_zero=min_zero)
    scale, zero = round_scale(scale.to(torch.float32), scale_dtype), zero.to(torch.float32)
    if not mse:
        return scale, zero
    maxq = (1 << bits) - 1
    best_scale = scale
    best_err = torch.full_like(scale, float("inf"))
    for step in range(int(max_shrink * grid)):
        candidate = round_scale(scale * (1 - step / grid), scale_dtype)
        dq = dequantize_from_grid(round_codes(w, candidate, zero, maxq), candidate, zero)
        err = (dq - w).abs_().pow_(norm).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, candidate, best_scale)
    return best_scale, zero
