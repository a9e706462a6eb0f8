"""``torch-int4``: 4-bit GPTQ layers on torch's CUDA int4 matmul, as one more candidate.

torch's ``aten._weight_int4pack_mm`` (tinygemm) runs on tensor cores from sm_80, bfloat16
activations only. The layer's codes are repacked into the op's layout and its scales and zeros
into the op's table once, here; :mod:`ferrule_cuda_kernels.int4pack` says how and why the map is
exact. The packed copy is 0.5 bytes a weight on top of the layer's own buffers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ferrule_core.format import unpack_cols, unpack_rows
from ferrule_core.kernels.weight_only_grad import run, stored_weight
from ferrule_cuda_kernels.groups import op_group_size
from ferrule_cuda_kernels.int4pack import (
    block_groups,
    inner_k_tiles,
    pack_nibbles,
    scales_and_zeros,
)


class TorchInt4Kernel:
    """``forward(x) = x @ W`` for a 4-bit ``QuantLinear`` whose rows are sorted by group."""

    name = "torch-int4"

    def __init__(self, layer: torch.nn.Module):
        if layer.bits != 4:
            raise ValueError(f"torch-int4 serves 4-bit layers, not {layer.bits}-bit")
        if layer.qweight.device.type != "cuda":
            raise ValueError(f"torch-int4 runs on CUDA; the layer is on {layer.qweight.device}")
        self.layer = layer
        self.in_features = layer.g_idx.numel()
        groups, self.out_features = layer.scales.shape
        g_idx = layer.g_idx.long()
        if bool((g_idx[1:] < g_idx[:-1]).any()):
            raise ValueError("torch-int4 needs the layer's rows sorted by group (sort_groups())")
        rows = torch.bincount(g_idx, minlength=groups).tolist()
        self.group_size = op_group_size([count for count in rows if count])
        if self.group_size is None:
            raise ValueError(
                f"torch-int4 needs every group to be a multiple of 32 rows; this layer's "
                f"groups have {sorted(set(rows))} rows"
            )
        blocks = block_groups(rows, self.group_size).to(layer.scales.device)
        codes = unpack_rows(layer.qweight, 4)  # [K, N], stored (sorted) row order
        self.packed = torch.ops.aten._convert_weight_to_int4pack(
            pack_nibbles(codes.t()), inner_k_tiles(self.in_features)
        )
        zeros = unpack_cols(layer.qzeros, 4)
        table = scales_and_zeros(layer.scales, zeros, blocks)
        self.table = table.to(torch.bfloat16).contiguous()

    def forward(self, x: Tensor) -> Tensor:
        return run(self, x)

    def matmul(self, x: Tensor) -> Tensor:
        if x.dtype != torch.bfloat16:
            raise TypeError(f"torch-int4 takes bfloat16 activations, got {x.dtype}")
        rows = x.reshape(-1, self.in_features).contiguous()
        if rows.shape[0] == 0:
            out = rows.new_empty(0, self.out_features)
        else:
            out = torch.ops.aten._weight_int4pack_mm(rows, self.packed, self.group_size, self.table)
        return out.reshape(*x.shape[:-1], self.out_features)

    def input_weight(self) -> Tensor:
        """The float32 ``[K, N]`` weight in the stored (sorted) row order ``matmul`` takes."""
        return stored_weight(self.layer)
