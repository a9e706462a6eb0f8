"""Folding act-order layers' input permutations into the operations that feed them, at load.

An act-order GPTQ layer computes ``x[..., perm] @ W_sorted``: run as it is, every call gathers
``x`` through ``perm`` first (on a GPU a pass over ``x`` of its own, or scattered loads in the
matmul), which made act-order layers 2-25% slower than in-order ones. Where the operation
that produces ``x`` can emit it already permuted, the permutation is paid once, at load:

- a norm feeding the layer (:func:`fold_into_norm`: q/k/v after ``input_layernorm``, gate/up
  after ``post_attention_layernorm``) writes its output features in the layer's order;
- a linear layer feeding it through an elementwise step (:func:`fold_into_outputs`: gate/up,
  through ``act(gate) * up``, feeding down) has its output features permuted in its weights.

The consumer then takes its input in order (``QuantLinear.permute_inputs``) and is an in-order
layer to every kernel. The outputs are unchanged: the same products, summed in another order.
A layer fed by attention (``o_proj``) keeps its gather. Engine models call these from
``fold_input_orders()`` methods of their submodules, which ``EngineModel.fold_input_orders``
runs once the weights are loaded and merged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ferrule_core.quant_linear import QuantLinear


def shared_input_order(layers: Sequence[nn.Module]) -> torch.Tensor | None:
    """The input order every one of ``layers`` asks for (``QuantLinear.input_order``), or
    ``None`` when some layer is not act-order GPTQ or the orders differ."""
    if not layers or not all(isinstance(layer, QuantLinear) for layer in layers):
        return None
    order = layers[0].input_order()
    if order is None:
        return None
    for layer in layers[1:]:
        other = layer.input_order()
        if other is None or not torch.equal(other, order):
            return None
    return order


def fold_into_norm(norm: nn.Module, layers: Sequence[nn.Module]) -> bool:
    """Have ``norm`` (an ``RMSNorm``, whose output only ``layers`` read) emit its features in
    the layers' shared input order; whether it did."""
    order = shared_input_order(layers)
    if order is None:
        return False
    norm.set_output_order(order)
    for layer in layers:
        layer.permute_inputs(order)
    return True


def fold_into_outputs(layer: nn.Module, producers: Sequence[nn.Module]) -> bool:
    """Have ``producers`` (``DenseLinear`` or ``QuantLinear``, combined elementwise into
    ``layer``'s input) emit their output features in ``layer``'s input order; whether they did.

    A producer that is several of them merged (gate and up as one ``[gate | up]`` layer) is
    permuted block by block: its ``out_features`` is a multiple of ``layer.in_features``.
    """
    order = shared_input_order([layer])
    if order is None:
        return False
    width = layer.in_features
    if any(p.out_features % width or not hasattr(p, "permute_outputs") for p in producers):
        return False
    for producer in producers:
        blocks = producer.out_features // width
        full = torch.cat([order + block * width for block in range(blocks)])
        producer.permute_outputs(full)
    layer.permute_inputs(order)
    return True
