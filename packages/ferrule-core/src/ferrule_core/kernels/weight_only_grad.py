"""Gradients to the input through linear kernels whose ops define none.

Weight-only quantized matmuls (torch's ``_weight_int4pack_mm*``, ``_weight_int8pack_mm``,
compiled extensions) have no backward. Training adapters on a frozen quantized layer (LoRA)
needs only ``dL/dx = dL/dy @ W^T``, so when the input requires a gradient a kernel runs
through :class:`WeightOnlyMatmul`, whose backward asks the kernel for its float32 weight
``[K, N]`` in the row order of the input ``matmul`` takes (slow, exact) and never touches the
packed tensors.

A kernel object provides ``matmul(x)`` and ``input_weight()`` and calls :func:`run`; a
kernel that takes its input in the layer's stored row order (it leaves ``input_perm`` to the
layer) returns :func:`stored_weight` of its layer.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor


class WeightOnlyKernel(Protocol):
    def matmul(self, x: Tensor) -> Tensor: ...

    def input_weight(self) -> Tensor:
        """The float32 ``[K, N]`` weight for the row order of ``matmul``'s input."""
        ...


class WeightOnlyMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, kernel: WeightOnlyKernel) -> Tensor:
        ctx.kernel = kernel
        return kernel.matmul(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        weight = ctx.kernel.input_weight().to(grad.device)
        return (grad.float() @ weight.t()).to(grad.dtype), None


def stored_weight(layer: Any) -> Tensor:
    """A ``QuantLinear``'s float32 weight ``[K, N]`` in its stored row order."""
    from ferrule_core.format import dequantize

    return dequantize(
        layer.qweight, layer.qzeros, layer.scales, layer.g_idx, layer.bits, dtype=torch.float32
    )


def run(kernel: WeightOnlyKernel, x: Tensor) -> Tensor:
    """``kernel.matmul(x)``, differentiable in ``x`` when autograd asks for it."""
    if x.requires_grad and torch.is_grad_enabled():
        return WeightOnlyMatmul.apply(x, kernel)
    return kernel.matmul(x)
