"""Merging linear layers that read the same input into one wider layer, once loaded.

q, k and v (and an MLP's gate and up) read the same activations. Checkpoints store them
apart, and the engine models load them by those names; after loading, :func:`merge_linears`
concatenates them along the output features, so a step runs one matmul instead of three
(or two): fewer launches, and a wider layer keeps a GPU's memory system busier. Callers
split the output with views (``out.split(sizes, dim=-1)``).

- Dense layers merge when they share dtype, device, input width and bias presence.
- GPTQ layers merge when they share bits, group size, act-order, grid, scale dtype and
  ``g_idx`` (the same rows in the same groups, which quantizing them together gives):
  ``qweight``, ``qzeros`` and ``scales`` are concatenated along the output features, which
  the packing allows since every layer's width fills whole words.

Layers that do not qualify stay apart (``None`` is returned).
"""

from __future__ import annotations

import torch
from torch import nn

from ferrule_core.quant_linear import QuantLinear
from ferrule_engine.layers.linear import DenseLinear


def merge_linears(layers: list[nn.Module]) -> nn.Module | None:
    """One layer computing ``cat([layer(x) for layer in layers], -1)``, or ``None``."""
    if len(layers) < 2:
        return None
    if all(type(layer) is DenseLinear for layer in layers):
        return _merge_dense(layers)
    if all(type(layer) is QuantLinear for layer in layers):
        return _merge_gptq(layers)
    return None


def _same(layers: list[nn.Module], *names: str) -> bool:
    first = layers[0]
    return all(getattr(layer, n) == getattr(first, n) for layer in layers for n in names)


def _shared_bias(layers: list[nn.Module]) -> bool | None:
    """Whether every layer has a bias (True) or none has (False); ``None`` when mixed."""
    present = {layer.bias is not None for layer in layers}
    return None if len(present) > 1 else present.pop()


@torch.no_grad()
def _merge_dense(layers: list[DenseLinear]) -> DenseLinear | None:
    first = layers[0]
    weights = [layer.weight for layer in layers]
    if not _same(layers, "in_features") or any(
        (w.dtype, w.device) != (weights[0].dtype, weights[0].device) for w in weights
    ):
        return None
    bias = _shared_bias(layers)
    if bias is None:
        return None
    merged = DenseLinear(
        first.in_features,
        sum(layer.out_features for layer in layers),
        bias=bias,
        dtype=weights[0].dtype,
        device=weights[0].device,
        registry=first.dense.registry,
    )
    merged.weight.copy_(torch.cat(weights, dim=0))
    if bias:
        merged.bias.copy_(torch.cat([layer.bias for layer in layers]))
    return merged


@torch.no_grad()
def _merge_gptq(layers: list[QuantLinear]) -> QuantLinear | None:
    first = layers[0]
    if not _same(layers, "in_features", "bits", "group_size", "desc_act", "sym"):
        return None
    if any(layer.input_perm is not None for layer in layers):
        return None  # merge before any kernel sorted the rows
    if any(layer.scales.dtype != first.scales.dtype for layer in layers):
        return None
    if not all(torch.equal(layer.g_idx, first.g_idx) for layer in layers[1:]):
        return None
    bias = _shared_bias(layers)
    if bias is None:
        return None
    merged = QuantLinear(
        first.in_features,
        sum(layer.out_features for layer in layers),
        first.bits,
        first.group_size,
        bias=bias,
        desc_act=first.desc_act,
        sym=first.sym,
        dtype=first.scales.dtype,
        device=first.qweight.device,
        kernel=first.kernel_choice,
        registry=first.registry,
    )
    for name in ("qweight", "qzeros", "scales"):
        getattr(merged, name).copy_(torch.cat([getattr(layer, name) for layer in layers], dim=1))
    merged.g_idx.copy_(first.g_idx)
    if bias:
        merged.bias.copy_(torch.cat([layer.bias for layer in layers]))
    return merged
