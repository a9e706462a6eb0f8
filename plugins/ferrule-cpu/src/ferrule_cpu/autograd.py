"""Gradients through torch's weight-only ops, which define none.

``aten._weight_int4pack_mm_for_cpu`` and ``aten._weight_int8pack_mm`` raise "derivative
... is not implemented" on backward. Training adapters on a frozen quantized layer (LoRA)
needs the gradient of the input only, ``dL/dx = dL/dy @ W``, so when the input requires a
gradient the kernel runs through :class:`WeightOnlyMatmul`, whose backward dequantizes the
layer's weight (slow, but exact) and never touches the packed tensors.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from ferrule_core.format import dequantize


class _Kernel(Protocol):
    layer: Any

    def matmul(self, x: Tensor) -> Tensor: ...


class WeightOnlyMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, kernel: _Kernel) -> Tensor:
        ctx.kernel = kernel
        return kernel.matmul(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        layer = ctx.kernel.layer
        weight = dequantize(  # [K, N]
            layer.qweight, layer.qzeros, layer.scales, layer.g_idx, layer.bits, dtype=torch.float32
        )
        return (grad.float() @ weight.t()).to(grad.dtype), None


def run(kernel: _Kernel, x: Tensor) -> Tensor:
    """``kernel.matmul(x)``, differentiable in ``x`` when autograd asks for it."""
    if x.requires_grad and torch.is_grad_enabled():
        return WeightOnlyMatmul.apply(x, kernel)
    return kernel.matmul(x)
