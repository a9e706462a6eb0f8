"""Quantizing one linear layer in place: method, packing, write-back, statistics.

The weight written back into the model is the dequantization of the packed tensors (with
their float16 scales), the same computation a resumed run applies to a saved block, so
later layers see exactly what the checkpoint will hold and a resumed run reproduces an
uninterrupted one bit for bit.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ferrule_core import QuantizeConfig, QuantMethodSpec
from ferrule_core.format import dequantize
from ferrule_core.format.grid import pack

SCALE_DTYPE = torch.float16
TENSOR_NAMES = ("qweight", "qzeros", "scales", "g_idx")


def quantize_linear(
    name: str,
    linear: nn.Linear,
    hessian: torch.Tensor | None,
    method: QuantMethodSpec,
    config: QuantizeConfig,
    **options: Any,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Quantize ``linear`` with ``method``; returns its GPTQ tensors (v2 zeros) and stats."""
    start = time.perf_counter()
    original = linear.weight.data.clone()
    result = method.quantize_layer(
        original, hessian, config, scale_dtype=SCALE_DTYPE, name=name, **options
    )
    packed = pack(result.quantized, checkpoint_format="gptq_v2", scale_dtype=SCALE_DTYPE)
    apply_packed(linear, packed, config.bits)
    stats = {
        "name": name,
        "in_features": linear.in_features,
        "out_features": linear.out_features,
        "loss": float(result.loss),
        "rel_error": relative_error(original, linear.weight.data, hessian),
        "damp_percent": result.damp_percent if hessian is not None else None,
        "seconds": time.perf_counter() - start,
    }
    return {k: packed[k].cpu() for k in TENSOR_NAMES}, stats


def apply_packed(linear: nn.Linear, packed: dict[str, torch.Tensor], bits: int) -> None:
    """Overwrite ``linear.weight`` with the dequantized GPTQ tensors."""
    weight = dequantize(
        packed["qweight"].to(linear.weight.device),
        packed["qzeros"].to(linear.weight.device),
        packed["scales"].to(linear.weight.device),
        packed["g_idx"].to(linear.weight.device),
        bits,
        dtype=torch.float32,
    )
    linear.weight.data.copy_(weight.t().to(linear.weight.dtype))


def relative_error(
    original: torch.Tensor, quantized: torch.Tensor, hessian: torch.Tensor | None
) -> float:
    """``tr(dW H dW^T) / tr(W H W^T)`` (relative output error), or ``|dW|/|W|`` without H."""
    original = original.float()
    delta = quantized.float() - original
    if hessian is None:
        return float(delta.norm() / original.norm().clamp_min(1e-30))
    h = hessian.float()
    num = ((delta @ h) * delta).sum()
    den = ((original @ h) * original).sum().clamp_min(1e-30)
    return float(num / den)
