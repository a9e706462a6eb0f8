"""Quantizing linear layers in place: method, packing, write-back, statistics.

Layers that read the very same input (q, k and v; gate and up) share one Hessian. For a
method whose rows are quantized independently given the Hessian (``row_separable``: GPTQ,
RTN), their weights are stacked and quantized in one call, which gives the same result as
one call per layer at a fraction of the sequential column sweeps.

The weight written back into the model is the dequantization of the packed tensors (with
their float16 scales), the same computation a resumed run applies to a saved block, so
later layers see exactly what the checkpoint will hold and a resumed run reproduces an
uninterrupted one bit for bit.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ferrule_core import QuantizeConfig, QuantMethodSpec
from ferrule_core.format import dequantize
from ferrule_core.format.grid import pack

SCALE_DTYPE = torch.float16
TENSOR_NAMES = ("qweight", "qzeros", "scales", "g_idx")


def quantize_linears(
    layers: dict[str, nn.Linear],
    hessian: torch.Tensor | None,
    method: QuantMethodSpec,
    config: QuantizeConfig,
    **options: Any,
) -> tuple[dict[str, dict[str, torch.Tensor]], list[dict[str, Any]]]:
    """Quantize ``layers`` (all reading one input, with Hessian ``hessian``) with ``method``.

    Returns each layer's GPTQ tensors (v2 zeros, on the CPU) and its statistics.
    """
    if len(layers) > 1 and not method.row_separable:
        out: dict[str, dict[str, torch.Tensor]] = {}
        stats: list[dict[str, Any]] = []
        for name, linear in layers.items():
            tensors, layer_stats = quantize_linears(
                {name: linear}, hessian, method, config, **options
            )
            out.update(tensors)
            stats.extend(layer_stats)
        return out, stats

    start = time.perf_counter()
    originals = {name: linear.weight.data.clone() for name, linear in layers.items()}
    label = " + ".join(layers)
    stacked = (
        torch.cat(list(originals.values())) if len(layers) > 1 else next(iter(originals.values()))
    )
    result = method.quantize_layer(
        stacked, hessian, config, scale_dtype=SCALE_DTYPE, name=label, **options
    )
    seconds = (time.perf_counter() - start) / len(layers)
    out, stats, row = {}, [], 0
    for name, linear in layers.items():
        rows = slice(row, row + linear.out_features)
        row += linear.out_features
        q = result.quantized
        part = replace(q, codes=q.codes[:, rows], zeros=q.zeros[:, rows], scales=q.scales[:, rows])
        packed = pack(part, checkpoint_format="gptq_v2", scale_dtype=SCALE_DTYPE)
        apply_packed(linear, packed, config.bits)
        loss, rel_error = weighted_error(originals[name], linear.weight.data, hessian)
        stats.append(
            {
                "name": name,
                "in_features": linear.in_features,
                "out_features": linear.out_features,
                "loss": loss,
                "rel_error": rel_error,
                "damp_percent": result.damp_percent if hessian is not None else None,
                "seconds": seconds,
            }
        )
        out[name] = {k: packed[k].to("cpu", copy=True) for k in TENSOR_NAMES}
    return out, stats


def apply_packed(linear: nn.Linear, packed: dict[str, torch.Tensor], bits: int) -> None:
    """Overwrite ``linear.weight`` with the dequantized GPTQ tensors."""
    device = linear.weight.device
    weight = dequantize(
        *(packed[name].to(device) for name in TENSOR_NAMES), bits, dtype=torch.float32
    )
    linear.weight.data.copy_(weight.t().to(linear.weight.dtype))


def weighted_error(
    original: torch.Tensor, quantized: torch.Tensor, hessian: torch.Tensor | None
) -> tuple[float, float]:
    """``(loss, relative error)`` of a quantized weight.

    With the Hessian ``H`` of the layer's inputs: ``loss = tr(dW H dW^T) / 2``, the
    objective GPTQ minimizes (the output's squared error on the calibration tokens), and
    the relative error ``tr(dW H dW^T) / tr(W H W^T)``. Without: ``|dW|^2 / 2`` and
    ``|dW| / |W|``.
    """
    original = original.float()
    delta = quantized.float() - original
    if hessian is None:
        return float(delta.square().sum() / 2), float(
            delta.norm() / original.norm().clamp_min(1e-30)
        )
    h = hessian.float()
    num = ((delta @ h) * delta).sum()
    den = ((original @ h) * original).sum().clamp_min(1e-30)
    return float(num / 2), float(num / den)
