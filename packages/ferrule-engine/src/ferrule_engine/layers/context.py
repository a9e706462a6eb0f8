"""``ModelContext``: what every layer of an engine model needs to know to build itself.

One context is made per model load and handed to every layer constructor: the dtype and
device of the weights, the GPTQ config and which linear layers hold GPTQ tensors, the
tensor-parallel group, the plugin registry and explicit kernel choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ferrule_core.config import QuantizeConfig
from ferrule_core.errors import ConfigError
from ferrule_core.registry import Registry
from ferrule_engine.layers.parallel import TensorParallelGroup


@dataclass
class ModelContext:
    """How to build an engine model's layers.

    ``quantized`` names the linear modules (``model.layers.0.self_attn.q_proj``) whose
    checkpoint holds GPTQ tensors; they are built as core ``QuantLinear`` layers with
    ``quant``'s bits, group size, act-order and grid. ``registry`` is where kernels are
    chosen (``None``: the default registry); ``linear_kernel`` / ``attention_kernel`` fix a
    kernel by name instead of letting selection pick.
    """

    dtype: torch.dtype = torch.float32
    device: torch.device | str = "cpu"
    quant: QuantizeConfig | None = None
    quantized: frozenset[str] = frozenset()
    tp: TensorParallelGroup = field(default_factory=TensorParallelGroup)
    registry: Registry | None = None
    linear_kernel: str | None = None
    attention_kernel: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise ConfigError(
                f"ModelContext: dtype={self.dtype!r} is not a floating torch dtype; "
                "use torch.float32, torch.bfloat16 or torch.float16"
            )
        self.device = torch.device(self.device)
        self.quantized = frozenset(self.quantized)
        if self.quantized and self.quant is None:
            example = sorted(self.quantized)[0]
            raise ConfigError(
                f"ModelContext: {len(self.quantized)} modules are marked quantized "
                f"(e.g. {example!r}) but quant is None; pass the checkpoint's QuantizeConfig"
            )

    def is_quantized(self, prefix: str) -> bool:
        """Whether the module named ``prefix`` holds GPTQ tensors."""
        return prefix in self.quantized
