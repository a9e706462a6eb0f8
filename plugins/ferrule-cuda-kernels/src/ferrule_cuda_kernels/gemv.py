"""``cuda-gptq-gemv``: a CUDA C++ GEMV over GPTQ's own layout for decode-sized batches.

``y = x[..., input_perm] @ W_sorted`` for 4- and 8-bit layers, reading ``qweight``, ``qzeros``
and ``scales`` as the layer holds them (no repacked copy): the kernel (``csrc/gptq_gemv.cu``,
whose header comment gives the layout and the arithmetic) streams the weight once with 16-byte
loads, applies each row of ``x`` (up to 8 in one pass) to every weight it loads, gathers ``x``
through the layer's ``input_perm`` itself (``handles_input_perm``; float16 act-order rows are
gathered once first, by a small kernel the product follows, from two rows, and one row from K =
16,384), accumulates in float32 (float16 ``x`` with 4-bit codes: sums of 16 products in float16
first, at a power-of-two scale chosen from the largest ``|x|``) and splits K over blocks when
the layer is too narrow to fill the GPU. More than 8 rows run in passes of 8, each reading the
weight again: correct at any batch; preferred for 1 and 2 rows (``preferred_rows``), where it
beats triton-gptq on an H100.

The layer arrives with its rows sorted by group (``sorted_groups=True``); the kernel needs
groups of ``group_size`` consecutive rows, which every GPTQ layer has once sorted, and a group
size that is a multiple of 32 rows at 4 bits (16 at 8 bits) or one group for all rows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ferrule_core.kernels.weight_only_grad import run
from ferrule_cuda_kernels import extension

DTYPES = (torch.float16, torch.bfloat16)
# Output tiles that may split K: the kernel splits only while the tiles are fewer than the
# blocks resident on the GPU, at most 8 blocks of 256 threads per multiprocessor.
COUNTERS_PER_SM = 8


class CudaGptqGemv:
    """``forward(x) = x @ W`` for a 4- or 8-bit ``QuantLinear`` on a CUDA device."""

    name = "cuda-gptq-gemv"
    handles_input_perm = True
    dtypes = DTYPES
    bit_widths = (4, 8)

    def __init__(self, layer: torch.nn.Module):
        device = layer.qweight.device
        if device.type != "cuda":
            raise ValueError(f"{self.name} runs on CUDA; the layer is on {device}")
        if layer.bits not in self.bit_widths:
            widths = "- and ".join(map(str, self.bit_widths))
            raise ValueError(f"{self.name} serves {widths}-bit layers, not {layer.bits}-bit")
        self.layer = layer
        self.bits = layer.bits
        self.in_features = layer.g_idx.numel()
        self.out_features = layer.scales.shape[1]
        self.group_size = uniform_group_size(layer.g_idx, layer.group_size)
        self.module = extension.load(tuple(torch.cuda.get_device_capability(device)))
        self.qweight = layer.qweight.contiguous()
        self.qzeros = layer.qzeros.contiguous()
        self.perm = None if layer.input_perm is None else layer.input_perm.to(torch.int32)
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        # Split-K tickets; the kernel leaves them at zero after each launch.
        self.counters = torch.zeros(sms * COUNTERS_PER_SM, dtype=torch.int32, device=device)
        self._scales: dict[torch.dtype, Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        return run(self, x)

    def matmul(self, x: Tensor) -> Tensor:
        if x.dtype not in self.dtypes:
            names = " or ".join(str(d).removeprefix("torch.") for d in self.dtypes)
            raise TypeError(f"{self.name} takes {names} activations, got {x.dtype}")
        rows = x.reshape(-1, self.in_features)  # a view where it can be: the kernel takes strides
        out = self._launch(rows, self._scales_in(x.dtype))
        return out.reshape(*x.shape[:-1], self.out_features)

    def _launch(self, rows: Tensor, scales: Tensor) -> Tensor:
        return self.module.gptq_gemv(
            rows, self.perm, self.qweight, self.qzeros, scales, self.counters, self.bits,
            self.group_size,
        )  # fmt: skip

    def input_weight(self) -> Tensor:
        """The float32 ``[K, N]`` weight in the original row order ``matmul`` takes."""
        return self.layer.dequantize_weight(torch.float32).t()

    def _scales_in(self, dtype: torch.dtype) -> Tensor:
        scales = self._scales.get(dtype)
        if scales is None:
            scales = self.layer.scales.detach().to(dtype).contiguous()
            self._scales[dtype] = scales
        return scales


def uniform_group_size(g_idx: Tensor, group_size: int) -> int:
    """Rows per group when row ``k`` is in group ``k // size`` (``K`` for one group), else raise."""
    in_features = g_idx.numel()
    size = in_features if group_size == -1 else min(group_size, in_features)
    expected = torch.arange(in_features, device=g_idx.device) // size
    if not torch.equal(g_idx.long(), expected):
        raise ValueError(
            "cuda-gptq-gemv needs groups of group_size consecutive rows once sorted "
            f"(g_idx == arange(K) // {size}); this layer's g_idx assigns rows otherwise"
        )
    return size
