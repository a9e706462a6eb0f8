"""Normalisation layers with Hugging Face's numerics.

:class:`RMSNorm` computes as transformers' ``LlamaRMSNorm``: the mean square in float32,
then ``weight * normed.to(input dtype)``. Given a ``residual`` it first adds it (the
decoder's ``hidden + residual`` in the input dtype) and returns the normalised sum with the
sum: the form a fused ``norm`` kernel (:mod:`.fused`) computes in one launch.
A model may fold the next layer's input permutation into the norm
(:meth:`RMSNorm.set_output_order`, see :mod:`.input_order`): it then returns its output
features in that order, gathered within the row by a fused kernel that sets
``handles_output_order`` (it reads ``output_order``), else by a gather after it.
:class:`LayerNorm` is ``nn.LayerNorm``'s computation with parameters ``weight`` and ``bias``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ferrule_core.quant_linear import check_permutation
from ferrule_engine.layers.context import ModelContext
from ferrule_engine.layers.fused import FusedModule, KernelDispatch


def _place(ctx: ModelContext | None) -> dict:
    ctx = ctx or ModelContext()
    return {"dtype": ctx.dtype, "device": ctx.device}


class RMSNorm(FusedModule):
    """``weight * x / sqrt(mean(x**2) + eps)`` over the last dimension."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, *, ctx: ModelContext | None = None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, **_place(ctx)), requires_grad=False)
        self.fused = KernelDispatch("norm", ctx.registry if ctx is not None else None)
        # Set by set_output_order (int32): the output is norm(x)[..., output_order].
        self.register_buffer("output_order", None, persistent=False)

    @torch.no_grad()
    def set_output_order(self, order: torch.Tensor) -> None:
        """Return ``norm(x)[..., order]`` from now on (the residual sum stays in order)."""
        order = check_permutation(order, self.weight.numel(), "set_output_order")
        self.output_order = order.to(self.weight.device, torch.int32)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``norm(x)``, or with ``residual`` the pair ``(norm(x + residual), x + residual)``."""
        kernel = self.fused.kernel(self, x)
        if kernel is not None:
            out = kernel.forward(x, residual)
            if self.output_order is None or getattr(kernel, "handles_output_order", False):
                return out
        elif residual is not None:
            x = x + residual
            out = self._norm(x), x
        else:
            out = self._norm(x)
        if self.output_order is None:
            return out
        if residual is None:
            return out.index_select(-1, self.output_order)
        return out[0].index_select(-1, self.output_order), out[1]

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


class LayerNorm(nn.Module):
    """``nn.LayerNorm`` over the last dimension, with an optional bias."""

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-5,
        *,
        bias: bool = True,
        ctx: ModelContext | None = None,
    ):
        super().__init__()
        self.eps = eps
        self.hidden_size = hidden_size
        place = _place(ctx)
        self.weight = nn.Parameter(torch.ones(hidden_size, **place), requires_grad=False)
        if bias:
            self.bias = nn.Parameter(torch.zeros(hidden_size, **place), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.hidden_size,), self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}, bias={self.bias is not None}"
