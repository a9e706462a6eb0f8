"""Linear layers of engine models: dense weights or GPTQ tensors, loaded by name.

:func:`make_linear` builds a :class:`DenseLinear` (parameters ``weight [out, in]`` and
``bias``, as ``nn.Linear``) or, when the checkpoint holds GPTQ tensors for the module
(``prefix in ctx.quantized``), a core ``QuantLinear`` (buffers ``qweight``, ``qzeros``,
``scales``, ``g_idx``, ``bias``). Either way the tensor names equal the checkpoint's, so
``EngineModel.load_weights`` fills them by name.

``parallel`` says how the layer would be split under tensor parallelism (``column``: the
output features, ``row``: the input features, ``replicated``: not at all); only a group of
size 1 is supported for now.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ferrule_core.errors import ConfigError
from ferrule_core.quant_linear import QuantLinear, check_permutation
from ferrule_engine.layers.context import ModelContext
from ferrule_engine.layers.fused import KernelDispatch

PARALLEL_STYLES = ("column", "row", "replicated")


class DenseDispatch(KernelDispatch):
    """Runs an unquantized layer (``weight [out, in]``, ``bias``) through the platform's dense
    kernel, if one is installed: a ``linear`` kernel that accepts ``bits=16``, chosen on the
    first call for the input's device and dtype (``ferrule-cpu`` offers one). Without one,
    or when selection refuses, ``F.linear``. Selection runs again when the device, the dtype
    or the weight object changes."""

    def __init__(self, registry=None):
        super().__init__("linear", registry)

    def __call__(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out_features, in_features = layer.weight.shape
        kernel = self.kernel(
            layer, x, id(layer.weight), in_features=in_features, out_features=out_features
        )
        if kernel is None:
            return F.linear(x, layer.weight, layer.bias)
        return kernel.forward(x)


class DenseLinear(nn.Module):
    """``y = x @ weight.T + bias`` with the weight in ``nn.Linear`` layout ``[out, in]``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        registry=None,
    ):
        super().__init__()
        self.dense = DenseDispatch(registry)
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features, dtype=dtype, device=device),
            requires_grad=False,
        )
        if bias:
            self.bias = nn.Parameter(
                torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False
            )
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self, x)

    @torch.no_grad()
    def permute_outputs(self, order: torch.Tensor) -> None:
        """From now on compute ``forward(x)[..., order]`` (``order``: a permutation of the
        output features), as ``QuantLinear.permute_outputs`` does for GPTQ layers."""
        order = check_permutation(order, self.out_features, "permute_outputs", "out_features")
        order = order.to(self.weight.device)
        self.weight.copy_(self.weight.index_select(0, order))
        if self.bias is not None:
            self.bias.copy_(self.bias.index_select(0, order))
        self.dense.forget()

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


def make_linear(
    in_features: int,
    out_features: int,
    *,
    bias: bool,
    prefix: str,
    ctx: ModelContext,
    parallel: str = "column",
) -> nn.Module:
    """The linear layer named ``prefix``: GPTQ if the checkpoint quantized it, else dense."""
    if parallel not in PARALLEL_STYLES:
        raise ConfigError(
            f"{prefix}: parallel={parallel!r} is not a parallel style; "
            f"use one of {', '.join(PARALLEL_STYLES)}"
        )
    ctx.tp.require_single(prefix)
    if not ctx.is_quantized(prefix):
        return DenseLinear(
            in_features,
            out_features,
            bias=bias,
            dtype=ctx.dtype,
            device=ctx.device,
            registry=ctx.registry,
        )
    quant = ctx.quant
    assert quant is not None  # ModelContext refuses quantized modules without a config
    return QuantLinear(
        in_features,
        out_features,
        quant.bits,
        quant.group_size,
        bias=bias,
        desc_act=quant.desc_act,
        sym=quant.sym,
        dtype=ctx.dtype,
        device=ctx.device,
        kernel=ctx.linear_kernel,
        registry=ctx.registry,
    )
