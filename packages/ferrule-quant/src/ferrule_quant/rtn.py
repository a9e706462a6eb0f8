"""Round-to-nearest: the baseline GPTQ is measured against, and the method that needs no data.

Each group of ``group_size`` input columns gets its own per-output-row grid
(:func:`ferrule_quant.grid.find_params`) and every weight is rounded to it independently.
Without a Hessian there is no column order to choose, so ``desc_act`` and ``static_groups``
change nothing: ``g_idx`` is ``k // group_size``. ``loss`` is the sum of squared weight errors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ferrule_core.config import QuantizeConfig
from ferrule_core.format.grid import QuantizedWeight
from ferrule_core.format.tensors import default_g_idx, num_groups
from ferrule_quant.gptq import LayerResult, dequantize_weight
from ferrule_quant.grid import find_params, quantize_to_grid


def rtn_quantize(
    weight: Tensor,
    config: QuantizeConfig,
    *,
    mse: bool = False,
    scale_dtype: torch.dtype | None = None,
) -> LayerResult:
    """Round ``weight [N, K]`` (``nn.Linear`` layout) to nearest on per-group grids.

    ``mse`` and ``scale_dtype`` are as in :func:`ferrule_quant.gptq.gptq_quantize`.
    ``damp_percent`` in the result is 0: RTN uses no Hessian.
    """
    if weight.dim() != 2 or not weight.dtype.is_floating_point:
        raise ValueError(
            f"expected a 2-D floating weight [out_features, in_features], got shape "
            f"{tuple(weight.shape)} dtype {weight.dtype}"
        )
    rows, cols = weight.shape
    W = weight.detach().to(torch.float32)
    group = config.group_size if config.group_size > 0 else cols
    groups = num_groups(cols, config.group_size)
    scales = W.new_zeros(groups, rows)
    zeros = torch.zeros_like(scales)
    codes = torch.zeros(cols, rows, dtype=torch.int32, device=W.device)
    maxq = (1 << config.bits) - 1
    for g in range(groups):
        part = W[:, g * group : (g + 1) * group]
        scales[g], zeros[g] = find_params(
            part,
            config.bits,
            config.sym,
            mse=mse,
            scale_dtype=scale_dtype,
            min_zero=config.min_zero,
        )
        codes[g * group : (g + 1) * group] = quantize_to_grid(part, scales[g], zeros[g], maxq).t()
    quantized = QuantizedWeight(
        codes=codes,
        zeros=zeros.to(torch.int32),
        scales=scales,
        g_idx=default_g_idx(cols, config.group_size, device=W.device),
        bits=config.bits,
        group_size=config.group_size,
    )
    dequantized = dequantize_weight(quantized, weight.dtype)
    loss = float((dequantized.to(torch.float64) - weight.to(torch.float64)).square().sum())
    return LayerResult(quantized, dequantized, loss, 0.0)
