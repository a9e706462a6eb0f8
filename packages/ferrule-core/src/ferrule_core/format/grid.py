"""Round-to-nearest grid fitting: min/max grids per row or per group, as GPTQ's ``Quantizer``.

A grid is a scale and an integer zero point; a value ``x`` is stored as
``clamp(round(x / scale) + zero, 0, 2**bits - 1)``. Like the reference GPTQ ``Quantizer``
the range always includes 0 (``min <= 0 <= max``), so 0 is exactly representable and the
zero point lies on the grid. Symmetric grids use ``[-amax, amax]`` with ``zero = 2**(bits-1)``.
An all-zero row (range 0) gets the range ``[-1, 1]`` as in the reference, and scales are
clamped to the smallest normal float so that no row divides by zero or by a denormal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ferrule_core.errors import FormatError
from ferrule_core.format.tensors import (
    _check_bits,
    _check_format,
    default_g_idx,
    num_groups,
    pack_cols,
    pack_rows,
    zeros_v2_to_v1,
)


@dataclass(frozen=True)
class QuantizedWeight:
    """One layer's quantized weight, unpacked, with v2 zero points (the true zero point).

    ``codes`` int32 ``[K, N]``, ``zeros`` int32 ``[G, N]``, ``scales`` ``[G, N]``,
    ``g_idx`` int32 ``[K]``; ``W[k, n] = (codes[k, n] - zeros[g, n]) * scales[g, n]``.
    """

    codes: Tensor
    zeros: Tensor
    scales: Tensor
    g_idx: Tensor
    bits: int
    group_size: int


def _grid(
    xmin: Tensor, xmax: Tensor, bits: int, sym: bool, min_zero: int = 0
) -> tuple[Tensor, Tensor]:
    maxq = (1 << bits) - 1
    xmin = xmin.clamp(max=0)
    xmax = xmax.clamp(min=0)
    if sym:
        xmax = torch.maximum(-xmin, xmax)
        xmin = -xmax
    empty = xmax == xmin  # only all-zero rows, since the range includes 0
    xmin = torch.where(empty, -1.0, xmin)
    xmax = torch.where(empty, 1.0, xmax)
    scale = ((xmax - xmin) / maxq).clamp(min=torch.finfo(xmin.dtype).tiny)
    if sym:
        zero = torch.full_like(scale, (maxq + 1) // 2, dtype=torch.int32)
    else:
        zero = torch.round(-xmin / scale).clamp(0, maxq)
        if min_zero:
            # Raise the zero point to ``min_zero`` and widen the scale so that the top of
            # the range still fits: [xmin, xmax] lies within [-min_zero, maxq - min_zero] * s.
            low = zero < min_zero
            zero = torch.where(low, float(min_zero), zero)
            scale = torch.where(low, (xmax / (maxq - min_zero)).clamp(min=scale), scale)
        zero = zero.to(torch.int32)
    return scale, zero


def _compute_dtype(weight: Tensor, what: str) -> torch.dtype:
    if weight.dim() != 2 or not weight.dtype.is_floating_point:
        raise FormatError(
            f"{what}: expected a 2-D floating weight, got shape {tuple(weight.shape)} "
            f"dtype {weight.dtype}"
        )
    if bad := int((~torch.isfinite(weight)).sum()):
        raise FormatError(f"{what}: weight has {bad} NaN or infinite values; grids need finite")
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def fit_grid(weight: Tensor, bits: int, sym: bool, *, min_zero: int = 0) -> tuple[Tensor, Tensor]:
    """Min/max grid of each row of ``weight [rows, cols]``: ``(scale [rows], zero [rows] int32)``.

    Asymmetric: ``scale = (max - min) / maxq``, ``zero = round(-min / scale)``. Symmetric:
    ``scale = 2 * amax / maxq``, ``zero = 2**(bits-1)``. See the module docstring for guards.
    ``min_zero=1`` keeps asymmetric zero points off 0, which v1 checkpoints cannot store
    (see :attr:`ferrule_core.QuantizeConfig.min_zero`).
    """
    _check_bits(bits)
    w = weight.to(_compute_dtype(weight, "fit_grid"))
    return _grid(w.amin(dim=1), w.amax(dim=1), bits, sym, min_zero)


def quantize_rtn(
    weight: Tensor,
    bits: int,
    group_size: int,
    sym: bool = True,
    g_idx: Tensor | None = None,
    *,
    min_zero: int = 0,
) -> QuantizedWeight:
    """Round ``weight`` (``nn.Linear`` layout ``[N, K]``) to nearest on each group's grid.

    Each group's grid is fitted on the input rows ``g_idx`` assigns to it (default
    ``arange(K) // group_size``; any act-order assignment with values in ``[0, G)`` works).
    """
    _check_bits(bits)
    compute = _compute_dtype(weight, "quantize_rtn")
    out_features, in_features = weight.shape
    groups = num_groups(in_features, group_size)
    if g_idx is None:
        g_idx = default_g_idx(in_features, group_size, device=weight.device)
    elif (
        g_idx.shape != (in_features,)
        or g_idx.dtype.is_floating_point
        or (in_features and not 0 <= int(g_idx.min()) <= int(g_idx.max()) < groups)
    ):
        raise FormatError(
            f"g_idx (shape {tuple(g_idx.shape)}, dtype {g_idx.dtype}) must be an integer [K] "
            f"tensor with K={in_features} and values in [0, {groups - 1}] "
            f"(group_size={group_size} gives {groups} groups)"
        )
    wt = weight.t().to(compute)  # [K, N]
    rows = g_idx.long()
    index = rows[:, None].expand_as(wt)
    start = torch.zeros(groups, out_features, dtype=compute, device=weight.device)
    gmin = start.scatter_reduce(0, index, wt, "amin")  # include_self: the range includes 0
    gmax = start.scatter_reduce(0, index, wt, "amax")
    scales, zeros = _grid(gmin, gmax, bits, sym, min_zero)
    codes = torch.round(wt / scales[rows]) + zeros[rows]
    codes = codes.clamp(0, (1 << bits) - 1).to(torch.int32)
    return QuantizedWeight(codes, zeros, scales, g_idx.to(torch.int32), bits, group_size)


def pack(
    q: QuantizedWeight, *, checkpoint_format: str = "gptq_v2", scale_dtype=torch.float16
) -> dict[str, Tensor]:
    """Checkpoint tensors ``{"qweight", "qzeros", "scales", "g_idx"}`` of ``q``.

    ``checkpoint_format="gptq"`` stores v1 zeros (``z - 1``) and raises on zero points of 0.
    """
    _check_format(checkpoint_format)
    qzeros = pack_cols(q.zeros, q.bits)
    if checkpoint_format == "gptq":
        qzeros = zeros_v2_to_v1(qzeros, q.bits)
    return {
        "qweight": pack_rows(q.codes, q.bits),
        "qzeros": qzeros,
        "scales": q.scales.to(scale_dtype),
        "g_idx": q.g_idx.to(torch.int32),
    }
