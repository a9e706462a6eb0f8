"""``GatedMLP``: ``down_proj(act(gate_proj(x)) * up_proj(x))``, Llama's feed-forward block.

The activation is transformers' ``ACT2FN[hidden_act]``, so ``silu``, ``gelu_pytorch_tanh``
and the rest compute exactly as in the reference model. Models that route tokens to
experts replace this module (it is one attribute of the decoder layer).
"""

from __future__ import annotations

import torch
from torch import nn

from ferrule_core.errors import ConfigError
from ferrule_engine.layers.context import ModelContext
from ferrule_engine.layers.linear import make_linear


def activation(name: str) -> nn.Module:
    """transformers' activation module for ``hidden_act=name``."""
    from transformers.activations import ACT2FN

    if name not in ACT2FN:
        raise ConfigError(
            f"hidden_act={name!r} is not an activation transformers knows; "
            f"use one of {', '.join(sorted(ACT2FN))}"
        )
    return ACT2FN[name]


class GatedMLP(nn.Module):
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
