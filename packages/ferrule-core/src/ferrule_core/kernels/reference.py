"""The reference linear kernel: dequantize the whole weight, then one matmul.

It runs wherever torch runs and is the default every faster kernel is measured against.
Half-precision inputs are computed in float32 and cast back; float64 stays float64.
"""

from __future__ import annotations

import torch

from ferrule_core.format import dequantize


class ReferenceLinearKernel:
    name = "reference"

    def __init__(self, layer: torch.nn.Module):
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        weight = dequantize(
            layer.qweight, layer.qzeros, layer.scales, layer.g_idx, layer.bits, dtype=compute
        )
        return torch.matmul(x.to(compute), weight).to(x.dtype)
