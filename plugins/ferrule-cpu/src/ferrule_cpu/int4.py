"""``cpu-int4``: GPTQ layers of 2, 3 and 4 bits on torch's int4 CPU weight-only matmul.

The op, established from torch's source (``_weight_int4pack_mm_cpu`` in
``aten/src/ATen/native/LinearAlgebra.cpp``, ``int4mm_kernel.cpp``) and probed here:

- ``aten._convert_weight_to_int4pack_for_cpu(w, inner_k_tiles)`` packs int32 codes
  ``w [N, K]`` in [0, 16) into uint8 ``[N, K/2]``; it needs N % 16 == 0 and K even.
  ``inner_k_tiles`` is ignored on the CPU (identical output for 1, 2, 4, 8). The packed
  order depends on the CPU's SIMD width (blocks of 32 output features on AVX2, 64 on
  AVX512), so it is built on the machine that runs it and never saved.
- ``aten._weight_int4pack_mm_for_cpu(x, packed, groupsize, scales_and_zeros)`` computes
  ``y[m, n] = sum_k x[m, k] * ((w[n, k] - 8) * s[k // groupsize, n] + z[k // groupsize, n])``
  with ``scales_and_zeros [K/groupsize, N, 2]`` (``[..., 0]`` scale, ``[..., 1]`` zero),
  accumulating in float32. ``x`` is a contiguous 2-D bfloat16, float16 or float32 tensor,
  ``scales_and_zeros`` has x's dtype, and ``groupsize`` is 32, 64, 128 or 256 dividing K.

GPTQ's ``w = (q - z) * s`` equals ``(q - 8) * s + (8 - z) * s``, so each 4-bit group maps
exactly with zero ``(8 - z) * s``. At 2 and 3 bits ``q - z + 8`` is an int4 code, so those
layers store it with zero 0: that avoids the cancellation of ``(q - 8) * s`` against
``(8 - z) * s``, which cost 2-bit layers a 1e-2 relative error in bfloat16 (now 2e-3). Group sizes, act-order and
short last groups are mapped by :mod:`ferrule_cpu.layout`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ferrule_core.format import unpack_cols, unpack_rows
from ferrule_core.kernels.weight_only_grad import run, stored_weight
from ferrule_cpu.layout import plan_rows

INNER_K_TILES = 2  # ignored by the CPU op; any of 1, 2, 4, 8 gives the same packing
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


class Int4CpuKernel:
    """``forward(x) = x @ W`` for a ``QuantLinear`` of 2-4 bits, weights packed once here."""

    name = "cpu-int4"

    def __init__(self, layer: torch.nn.Module):
        if layer.bits > 4:
            raise ValueError(f"cpu-int4 serves 2, 3 and 4-bit layers, not {layer.bits}-bit")
        if layer.qweight.device.type != "cpu":
            raise ValueError(f"cpu-int4 runs on the CPU; the layer is on {layer.qweight.device}")
        self.layer = layer
        groups, self.out_features = layer.scales.shape
        self.in_features = layer.g_idx.numel()
        if self.out_features % 16:
            raise ValueError(
                f"cpu-int4 needs out_features divisible by 16, got {self.out_features}"
            )
        self.layout = plan_rows(layer.g_idx, groups)

        codes = unpack_rows(layer.qweight, layer.bits)  # [K, N]
        # At 2 and 3 bits |q - z| <= 7, so the codes recentred on 8 (q - z + 8) are int4 codes
        # and the zero term vanishes; at 4 bits the zero is (8 - z) * s.
        self.recentred = layer.bits < 4
        if self.recentred:
            codes = codes - unpack_cols(layer.qzeros, layer.bits)[layer.g_idx.long()] + 8
        rows = self.layout.source_rows()
        real = rows < self.in_features
        weight = torch.full((rows.numel(), self.out_features), 8, dtype=torch.int32)
        weight[real] = codes[rows[real]]  # padding rows keep code 8: they meet zero activations
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            weight.t().contiguous(), INNER_K_TILES
        )
        self._tables: dict[torch.dtype, Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        return run(self, x)

    def input_weight(self) -> Tensor:
        """The float32 ``[K, N]`` weight for ``matmul``'s input (for input gradients)."""
        return stored_weight(self.layer)

    def matmul(self, x: Tensor) -> Tensor:
        table = self._table(x.dtype)
        rows = self.layout.gather(x.reshape(-1, self.in_features))
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(
            rows, self.packed, self.layout.group_size, table
        )
        return out.reshape(*x.shape[:-1], self.out_features)

    def _table(self, dtype: torch.dtype) -> Tensor:
        """``scales_and_zeros [K'/groupsize, N, 2]`` in ``dtype``, built once per dtype."""
        table = self._tables.get(dtype)
        if table is None:
            if dtype not in DTYPES:
                names = ", ".join(str(d).removeprefix("torch.") for d in DTYPES)
                raise TypeError(f"cpu-int4 takes activations in {names}, got {dtype}")
            layer, blocks = self.layer, self.layout.block_groups
            scales = layer.scales.detach().double()[blocks]
            if self.recentred:
                zeros = torch.zeros_like(scales)
            else:
                zeros = (8 - unpack_cols(layer.qzeros, layer.bits).double()[blocks]) * scales
            table = torch.stack([scales, zeros], dim=-1).to(dtype).contiguous()
            self._tables[dtype] = table
        return table
