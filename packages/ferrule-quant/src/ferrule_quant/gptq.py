"""GPTQ (Frantar et al. 2022): quantize one linear layer, column by column, with error feedback.

Columns (input features) are quantized one at a time; each one's rounding error, weighted by
the inverse Hessian, is spread over the columns not yet quantized, so that ``X W^T`` changes
as little as possible. As in the paper's reference implementation:

- Everything is computed in float32 on ``weight.device``.
- Dead inputs (``H[i, i] == 0``, never active in the calibration data) get ``H[i, i] = 1``
  and a zero weight column; their codes are the zero point, so they dequantize to exactly 0.
- Damping: ``damp_percent * mean(diag(H))`` is added to the diagonal. When the Cholesky
  factorisation still fails, the damping doubles (a warning names the values tried) up to
  ``MAX_DAMP_PERCENT``; past that a :class:`DampingError` names the layer and the values.
  (GPTQModel adds fixed steps instead; doubling gets there in a few factorisations and
  overshoots by at most 2x.)
- The inverse Hessian enters through the upper Cholesky factor ``U`` of ``(H + damp I)^-1``
  (computed without forming the inverse, see :func:`_inverse_hessian_factor`); column ``i``'s
  error ``(w - q) / U[i, i]`` updates the later columns of its block of ``block_size`` at
  once and the rest of the matrix lazily, once per block.
- Act-order (``desc_act``) quantizes columns by decreasing ``diag(H)`` and undoes the
  permutation at the end; ``g_idx[perm[i]] = i // group_size``. With ``static_groups`` every
  group's grid is fitted up front on the un-permuted weight, so ``g_idx = k // group_size``.
- ``group_size=-1``: one grid per row, fitted once on the whole (dead-zeroed) weight.
- Otherwise the grid is refitted at each group boundary ``i % group_size == 0`` on the group's
  columns as they are then: not yet quantized, with every earlier column's error applied.
  Deviation: the reference reads those columns from the block-stale matrix, so a boundary
  inside a block (group_size < block_size) misses the errors of the block's earlier columns;
  here blocks start at group boundaries, so they are included.
- The column loop inside a block is :func:`ferrule_quant.sweep.sweep` (a CUDA graph on GPUs).
- ``loss`` is the reference's ``sum((w - q)**2 / U[i, i]**2) / 2``. For the total change
  ``E = W - Q`` it equals ``tr(E (H + damp I) E^T) / 2``: with ``H = 2/n X^T X``, the mean
  squared output error per token ``||X E^T||^2 / n`` plus the damping term.

Zero points: min/max grids contain 0 (as the reference), so an asymmetric group whose weights
are all >= 0 gets zero point 0, a valid v2 (``gptq_v2``) zero. The v1 ``gptq`` format stores
``z - 1`` and cannot hold it for readers that do not wrap, so asymmetric configs written as v1
fit grids with zero points of at least 1 (``QuantizeConfig.min_zero``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ferrule_core.config import QuantizeConfig
from ferrule_core.errors import FerruleError
from ferrule_core.format.grid import QuantizedWeight
from ferrule_core.format.tensors import num_groups
from ferrule_quant.grid import find_params
from ferrule_quant.sweep import sweep

logger = logging.getLogger("ferrule.quant")

MAX_DAMP_PERCENT = 1.0  # damping equal to the mean Hessian diagonal: little of H is left
DAMP_GROWTH = 2.0


class DampingError(FerruleError, ValueError):
    """The damped Hessian is not positive definite even at the largest damping tried."""


@dataclass(frozen=True)
class LayerResult:
    """One quantized layer: the checkpoint tensors (v2 zeros), the dequantized ``weight``
    ``[N, K]`` in the input dtype, the GPTQ ``loss`` and the ``damp_percent`` used."""

    quantized: QuantizedWeight
    weight: Tensor
    loss: float
    damp_percent: float


def gptq_quantize(
    weight: Tensor,
    hessian: Tensor,
    config: QuantizeConfig,
    *,
    block_size: int = 128,
    mse: bool = False,
    scale_dtype: torch.dtype | None = None,
    name: str | None = None,
) -> LayerResult:
    """Quantize ``weight [N, K]`` (``nn.Linear`` layout) with the Hessian ``[K, K]`` of its inputs.

    ``mse`` searches each grid's range (:func:`ferrule_quant.grid.find_params`);
    ``scale_dtype`` (e.g. ``torch.float16``) fits scales in the precision the checkpoint
    stores them; ``name`` labels warnings and errors.
    """
    label = f"{name or 'layer'} with weight {tuple(weight.shape)}"
    _check_inputs(weight, hessian, block_size, label)
    rows, cols = weight.shape
    W = weight.detach().to(torch.float32, copy=True)
    H = hessian.detach().to(device=W.device, dtype=torch.float32, copy=True)
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    maxq = (1 << config.bits) - 1
    group = config.group_size if config.group_size > 0 else cols
    scales = W.new_zeros(num_groups(cols, config.group_size), rows)
    zeros = torch.zeros_like(scales)

    def fit(g: int, columns: Tensor) -> None:
        scales[g], zeros[g] = find_params(
            columns,
            config.bits,
            config.sym,
            mse=mse,
            scale_dtype=scale_dtype,
            min_zero=config.min_zero,
        )

    fitted_up_front = config.static_groups or config.group_size == -1
    if fitted_up_front:
        for g in range(scales.shape[0]):
            fit(g, W[:, g * group : (g + 1) * group])

    position = torch.arange(cols, device=W.device)
    perm = torch.argsort(H.diagonal(), descending=True) if config.desc_act else position
    if config.desc_act:
        W, H = W[:, perm], H[perm][:, perm]
    # group of the column quantized at each step; g_idx is this in the original order
    step_group = (perm if config.static_groups else position) // group

    U, damp_percent = _inverse_hessian_factor(H, config.damp_percent, label)
    # Grids are fitted where groups start, on columns carrying every earlier column's error.
    # Blocks start at every group start, so each fit happens between blocks, where the lazy
    # updates have reached the whole matrix (the result does not depend on the block size).
    step = block_size if fitted_up_front else math.gcd(block_size, group)
    codes = torch.zeros_like(W)
    loss = W.new_zeros(())
    for i1 in range(0, cols, step):
        i2 = min(i1 + step, cols)
        if not fitted_up_front and i1 % group == 0:
            fit(i1 // group, W[:, i1 : min(i1 + group, cols)])
        block_groups = step_group[i1:i2]
        q, err = sweep(
            W[:, i1:i2], U[i1:i2, i1:i2], scales[block_groups], zeros[block_groups], maxq
        )
        codes[:, i1:i2] = q
        loss += err.square().sum() / 2
        W[:, i2:].addmm_(err, U[i1:i2, i2:], alpha=-1)

    g_idx = torch.empty_like(step_group)
    g_idx[perm] = step_group
    codes_t = torch.empty_like(codes).t()  # [K, N], undoing the permutation
    codes_t[perm] = codes.t()
    quantized = QuantizedWeight(
        codes=codes_t.to(torch.int32).contiguous(),
        zeros=zeros.to(torch.int32),
        scales=scales,
        g_idx=g_idx.to(torch.int32),
        bits=config.bits,
        group_size=config.group_size,
    )
    return LayerResult(
        quantized, dequantize_weight(quantized, weight.dtype), float(loss), damp_percent
    )


def dequantize_weight(q: QuantizedWeight, dtype: torch.dtype) -> Tensor:
    """``[N, K]`` weight of the GPTQ formula ``(q[k, n] - z[g_idx[k], n]) * s[g_idx[k], n]``,
    computed in float32 (as the reference dequantize) and cast to ``dtype``."""
    g = q.g_idx.long()
    weight = (q.codes - q.zeros[g]).to(torch.float32) * q.scales[g].to(torch.float32)
    return weight.t().to(dtype)


def _inverse_hessian_factor(H: Tensor, damp_percent: float, label: str) -> tuple[Tensor, float]:
    """Upper Cholesky factor ``U`` of ``(H + damp * mean(diag H) * I)^-1``, raising damp as needed.

    The reference factors ``H``, forms the inverse and factors it again. With ``P`` the
    reversal permutation and ``P H P = L L^T``, ``U = P L^-1 P`` is upper triangular with a
    positive diagonal and ``U^T U = H^-1``: the same factor from one Cholesky factorisation and
    one triangular solve, without forming the inverse (same flop count, better conditioned).
    """
    flipped = H.flip(0, 1)
    identity = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    mean = float(H.diagonal().mean())
    tried: list[float] = []
    damp = damp_percent
    while True:
        lower, info = torch.linalg.cholesky_ex(flipped + damp * mean * identity)
        if int(info) == 0:
            upper = torch.linalg.solve_triangular(lower, identity, upper=False).flip(0, 1)
            if bool(torch.isfinite(upper).all()):
                break
        tried.append(damp)
        if damp >= MAX_DAMP_PERCENT:
            raise DampingError(
                f"{label}: the damped Hessian is not positive definite at damp_percent "
                f"{', '.join(f'{d:g}' for d in tried)} (the largest allowed is "
                f"{MAX_DAMP_PERCENT:g}); calibrate with more samples, or check the layer's "
                "inputs for outliers or bad values"
            )
        damp = min(damp * DAMP_GROWTH, MAX_DAMP_PERCENT)
    if tried:
        logger.warning(
            "%s: Cholesky failed at damp_percent %s; quantized with damp_percent=%g",
            label,
            ", ".join(f"{d:g}" for d in tried),
            damp,
        )
    return upper, damp


def _check_inputs(weight: Tensor, hessian: Tensor, block_size: int, label: str) -> None:
    if weight.dim() != 2 or not weight.dtype.is_floating_point:
        raise ValueError(
            f"{label}: expected a 2-D floating weight [out_features, in_features], got dtype "
            f"{weight.dtype}"
        )
    cols = weight.shape[1]
    if hessian.shape != (cols, cols):
        raise ValueError(
            f"{label}: the Hessian has shape {tuple(hessian.shape)}, expected [{cols}, {cols}] "
            "(in_features x in_features)"
        )
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size={block_size!r} must be a positive integer, e.g. 128")
    for what, tensor in (("weight", weight), ("Hessian", hessian)):
        if bad := int((~torch.isfinite(tensor)).sum()):
            raise ValueError(
                f"{label}: the {what} has {bad} NaN or infinite values; check the layer's "
                "calibration inputs (an overflow in float16 activations is a common cause)"
            )
    if bool((hessian.diagonal() < 0).any()):
        raise ValueError(f"{label}: the Hessian has negative diagonal entries; it must be X^T X")
