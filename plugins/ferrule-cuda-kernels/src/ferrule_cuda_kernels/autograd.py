"""Gradients to the input through kernels that define none.

The extension op and torch's ``_weight_int4pack_mm`` have no backward. Adapters on a frozen
quantized layer (LoRA) need only ``dL/dx = dL/dy @ W^T``, so when the input requires a gradient
the kernel runs through :class:`WeightOnlyMatmul`, whose backward dequantizes the layer's
weight (slow, exact) in the row order of the input the kernel was given.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor


class _Kernel(Protocol):
    def matmul(self, x: Tensor) -> Tensor: ...

    def input_weight(self) -> Tensor:
        """The float32 ``[K, N]`` weight for the row order of ``matmul``'s input."""
        ...


class WeightOnlyMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, kernel: _Kernel) -> Tensor:
        ctx.kernel = kernel
        return kernel.matmul(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        weight = ctx.kernel.input_weight().to(grad.device)
        return (grad.float() @ weight.t()).to(grad.dtype), None


def run(kernel: _Kernel, x: Tensor) -> Tensor:
    """``kernel.matmul(x)``, differentiable in ``x`` when autograd asks for it."""
    if x.requires_grad and torch.is_grad_enabled():
        return WeightOnlyMatmul.apply(x, kernel)
    return kernel.matmul(x)
