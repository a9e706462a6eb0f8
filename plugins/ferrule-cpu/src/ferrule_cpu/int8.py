"""``cpu-int8``: 8-bit per-channel GPTQ layers on torch's int8 CPU weight-only matmul.

The op, from torch's source (``_weight_int8pack_mm_cpu`` in
``aten/src/ATen/native/LinearAlgebra.cpp``, ``int8mm_kernel.cpp``) and probed here:
``aten._weight_int8pack_mm(x, w, scales)`` computes ``y = x @ (w * scales[:, None]).T`` for
``x [M, K]`` bfloat16, float16 or float32 (last dimension contiguous), ``w`` int8 ``[N, K]``
and ``scales [N]`` in x's dtype, accumulating in float32: symmetric, one scale per output.
Its x86 bfloat16 path reads activations with aligned SIMD loads, K at a time in steps of 8
(AVX2) or 16 (AVX512) with no tail loop: K % 16 != 0 or an activation row that is not
16-byte aligned crashes the process (both seen here), so the check refuses such K and
:meth:`Int8CpuKernel.matmul` copies misaligned activations.

A GPTQ 8-bit per-channel layer, ``W = (q - z) * s`` with an asymmetric zero, is served
exactly: ``x @ W.T = int8mm(x, q - 128, s) + x.sum(-1) * ((128 - z) * s)``, and the second
term vanishes for symmetric grids (``z = 128``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ferrule_core.format import unpack_cols, unpack_rows
from ferrule_core.kernels.weight_only_grad import run, stored_weight
from ferrule_cpu.checks import INT8_K_MULTIPLE

ALIGNMENT = 64  # bytes; what torch's CPU allocator gives every fresh tensor
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


class Int8CpuKernel:
    """``forward(x) = x @ W`` for an 8-bit per-channel ``QuantLinear``."""

    name = "cpu-int8"

    def __init__(self, layer: torch.nn.Module):
        if layer.bits != 8 or layer.group_size != -1:
            raise ValueError(
                "cpu-int8 serves 8-bit per-channel layers (group_size=-1), not "
                f"{layer.bits}-bit group_size={layer.group_size}"
            )
        if layer.qweight.device.type != "cpu":
            raise ValueError(f"cpu-int8 runs on the CPU; the layer is on {layer.qweight.device}")
        self.layer = layer
        self.in_features = layer.g_idx.numel()
        self.out_features = layer.scales.shape[-1]
        if self.in_features % INT8_K_MULTIPLE:
            raise ValueError(
                f"cpu-int8 needs in_features divisible by {INT8_K_MULTIPLE}, got {self.in_features}"
            )
        codes = unpack_rows(layer.qweight, 8)  # [K, N] in [0, 256)
        self.weight = (codes - 128).t().to(torch.int8).contiguous()  # [N, K]
        zeros = unpack_cols(layer.qzeros, 8)[0].double()
        self._offset = 128 - zeros  # the correction is x.sum(-1) * offset * s
        self._symmetric = bool((self._offset == 0).all())
        self._tables: dict[torch.dtype, tuple[Tensor, Tensor | None]] = {}

    def forward(self, x: Tensor) -> Tensor:
        return run(self, x)

    def input_weight(self) -> Tensor:
        """The float32 ``[K, N]`` weight for ``matmul``'s input (for input gradients)."""
        return stored_weight(self.layer)

    def matmul(self, x: Tensor) -> Tensor:
        scales, correction = self._table(x.dtype)
        rows = x.reshape(-1, self.in_features).contiguous()
        if rows.data_ptr() % ALIGNMENT:
            rows = rows.clone()
        out = torch.ops.aten._weight_int8pack_mm(rows, self.weight, scales)
        if correction is not None:
            out = out.float() + rows.float().sum(-1, keepdim=True) * correction
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def _table(self, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """Scales ``[N]`` in ``dtype`` and the float32 zero correction (``None`` if symmetric)."""
        table = self._tables.get(dtype)
        if table is None:
            if dtype not in DTYPES:
                names = ", ".join(str(d).removeprefix("torch.") for d in DTYPES)
                raise TypeError(f"cpu-int8 takes activations in {names}, got {dtype}")
            scales = self.layer.scales.detach()[0].double()
            correction = None if self._symmetric else (self._offset * scales).float()
            table = self._tables[dtype] = (scales.to(dtype).contiguous(), correction)
        return table
