"""``GatedMLP``: ``down_proj(act(gate_proj(x)) * up_proj(x))``, Llama's feed-forward block.

The activation is transformers' ``ACT2FN[hidden_act]``, so ``silu``, ``gelu_pytorch_tanh``
and the rest compute exactly as in the reference model. Models that route tokens to
experts replace this module (it is one attribute of the decoder layer).

Once gate and up are merged (:meth:`GatedMLP.merge_projections`), an ``activation`` kernel
from the registry (:mod:`.fused`; asked with ``activation=hidden_act``) may compute
``act(gate) * up`` from the merged ``[gate | up]`` output in one launch instead of two;
when none accepts (on the CPU, for an activation no kernel fuses) torch's ops run.
An act-order ``down_proj``'s permutation is folded into gate and up's output features
(:meth:`GatedMLP.fold_input_orders`).
"""

from __future__ import annotations

import torch
from torch import nn

from ferrule_core.errors import ConfigError
from ferrule_engine.layers.context import ModelContext
from ferrule_engine.layers.fused import FusedModule, KernelDispatch
from ferrule_engine.layers.linear import make_linear

# Rows per pass through the MLP. Its intermediates are [rows, intermediate_size]; slices of
# 1024 rows keep them small enough for the allocator to reuse (fresh multi-hundred-MB
# buffers cost page faults on every step) while the matmuls stay at full speed.
CHUNK_ROWS = 1024


def activation(name: str) -> nn.Module:
    """transformers' activation module for ``hidden_act=name``."""
    from transformers.activations import ACT2FN

    if name not in ACT2FN:
        raise ConfigError(
            f"hidden_act={name!r} is not an activation transformers knows; "
            f"use one of {', '.join(sorted(ACT2FN))}"
        )
    return ACT2FN[name]


class GatedMLP(FusedModule):
    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        *,
        hidden_act: str,
        bias: bool = False,
        prefix: str,
        ctx: ModelContext,
    ):
        super().__init__()
        self.gate_proj = make_linear(
            hidden_size, intermediate_size, bias=bias, prefix=f"{prefix}.gate_proj", ctx=ctx
        )
        self.up_proj = make_linear(
            hidden_size, intermediate_size, bias=bias, prefix=f"{prefix}.up_proj", ctx=ctx
        )
        self.down_proj = make_linear(
            intermediate_size,
            hidden_size,
            bias=bias,
            prefix=f"{prefix}.down_proj",
            ctx=ctx,
            parallel="row",
        )
        self.act_fn = activation(hidden_act)
        self.gate_up_proj: nn.Module | None = None  # gate and up merged once loaded
        self.intermediate_size = intermediate_size
        self.fused = KernelDispatch("activation", ctx.registry, activation=hidden_act)

    def merge_projections(self) -> None:
        """gate and up as one layer (after loading; see :mod:`ferrule_engine.layers.merge`)."""
        from ferrule_engine.layers.merge import merge_linears

        merged = merge_linears([self.gate_proj, self.up_proj])
        if merged is not None:
            self.gate_up_proj = merged
            del self.gate_proj, self.up_proj

    def input_projections(self) -> list[nn.Module]:
        """The layers that read the MLP's input: ``[gate_up_proj]`` once merged, else gate, up."""
        if self.gate_up_proj is not None:
            return [self.gate_up_proj]
        return [self.gate_proj, self.up_proj]

    def fold_input_orders(self) -> None:
        """An act-order down_proj takes its input in order: gate and up emit it so (after
        merging; see :mod:`ferrule_engine.layers.input_order`)."""
        from ferrule_engine.layers.input_order import fold_into_outputs

        fold_into_outputs(self.down_proj, self.input_projections())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` is ``[T, hidden]``; long batches run in slices of ``CHUNK_ROWS`` rows."""
        if x.dim() != 2 or x.shape[0] <= CHUNK_ROWS:
            return self._forward(x)
        first = self._forward(x[:CHUNK_ROWS])
        out = first.new_empty(x.shape[0], first.shape[1])
        out[:CHUNK_ROWS] = first
        for start in range(CHUNK_ROWS, x.shape[0], CHUNK_ROWS):
            out[start : start + CHUNK_ROWS] = self._forward(x[start : start + CHUNK_ROWS])
        return out

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate_up = self.gate_up_proj(x)
            kernel = self.fused.kernel(self, gate_up)
            if kernel is not None:
                return self.down_proj(kernel.forward(gate_up))
            gate, up = gate_up.split(self.intermediate_size, dim=-1)
            hidden = self.act_fn(gate)
        else:
            hidden = self.act_fn(self.gate_proj(x))
            up = self.up_proj(x)
        hidden = hidden * up if torch.is_grad_enabled() else hidden.mul_(up)
        return self.down_proj(hidden)
