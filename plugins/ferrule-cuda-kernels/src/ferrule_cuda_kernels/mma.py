"""``cuda-gptq-mma``: 4-bit GPTQ layers on tensor cores, for every batch size.

The layer's codes are repacked once (:mod:`ferrule_cuda_kernels.mma_pack`) into the fragments
of ``mma.sync`` m16n8k16, with the weight as the left operand and the tokens as the 8-wide
right one (``csrc/gptq_mma.cu``): 1 to 8 tokens cost one pass over the weight with no padded
tensor-core work, and up to ``max_mma_rows`` tokens run in that kernel (blocks of 64 tokens,
each reading the weight once; K split over blocks while the GPU has room). Larger batches
(prefill) dequantize the packed weight into a dense ``[N, K]`` buffer shared by every layer of
the device and dtype, and multiply with cuBLAS: at thousands of rows the matmul dwarfs the
dequantization.

Act-order layers arrive with their rows sorted by group (``sorted_groups``); the kernel
gathers ``x`` through ``input_perm`` as it loads it (``handles_input_perm``), and the dense
path gathers ``x`` once. Groups must be multiples of 16 rows (or one group), ``in_features`` a
multiple of 64 and ``out_features`` of 16. The packed copy is 0.5 bytes a weight on top of the
layer's own buffers; the dense buffer is the largest layer's ``N x K`` in the activation dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ferrule_core.format import unpack_cols, unpack_rows
from ferrule_core.kernels.weight_only_grad import run
from ferrule_cuda_kernels import extension
from ferrule_cuda_kernels.gemv import uniform_group_size
from ferrule_cuda_kernels.mma_pack import check_shape, pack

DTYPES = (torch.float16, torch.bfloat16)
MAX_MMA_ROWS = 128  # above this many rows: dequantize once, then cuBLAS
COUNTERS = 8192  # split-K tickets (output tiles of one launch)
SYMMETRIC_ZERO = 8

_dense: dict[tuple[torch.device, torch.dtype], Tensor] = {}


def dense_buffer(device: torch.device, dtype: torch.dtype, numel: int) -> Tensor:
    """The shared buffer for dequantized weights, grown to at least ``numel`` elements."""
    key = (device, dtype)
    buffer = _dense.get(key)
    if buffer is None or buffer.numel() < numel:
        buffer = torch.empty(numel, dtype=dtype, device=device)
        _dense[key] = buffer
    return buffer


class CudaGptqMma:
    """``forward(x) = x @ W`` for a 4-bit ``QuantLinear`` on a CUDA device."""

    name = "cuda-gptq-mma"
    handles_input_perm = True

    def __init__(self, layer: torch.nn.Module, *, max_mma_rows: int = MAX_MMA_ROWS):
        device = layer.qweight.device
        if device.type != "cuda":
            raise ValueError(f"cuda-gptq-mma runs on CUDA; the layer is on {device}")
        if layer.bits != 4:
            raise ValueError(f"cuda-gptq-mma serves 4-bit layers, not {layer.bits}-bit")
        self.layer = layer
        self.in_features = layer.g_idx.numel()
        self.out_features = layer.scales.shape[1]
        if problem := check_shape(self.in_features, self.out_features):
            raise ValueError(f"cuda-gptq-mma {problem}")
        self.group_size = uniform_group_size(layer.g_idx, layer.group_size)
        self.max_mma_rows = max_mma_rows
        self.module = extension.load(tuple(torch.cuda.get_device_capability(device)))
        self.packed = pack(unpack_rows(layer.qweight, 4))
        zeros = unpack_cols(layer.qzeros, 4)
        self.zeros = None if bool((zeros == SYMMETRIC_ZERO).all()) else zeros.to(torch.uint8)
        self.perm = None if layer.input_perm is None else layer.input_perm.to(torch.int32)
        self.counters = torch.zeros(COUNTERS, dtype=torch.int32, device=device)
        self.n_tiles = 0  # 0: the kernel's plan; 2 or 4 to tune one-token tiles
        self.splits = 0  # 0: the kernel's plan
        self._scales: dict[torch.dtype, Tensor] = {}
        if layer.scales.dtype in DTYPES:  # reserve now, not inside a CUDA-graph capture
            dense_buffer(device, layer.scales.dtype, self.in_features * self.out_features)

    def forward(self, x: Tensor) -> Tensor:
        return run(self, x)

    def matmul(self, x: Tensor) -> Tensor:
        if x.dtype not in DTYPES:
            raise TypeError(f"cuda-gptq-mma takes float16 or bfloat16 activations, got {x.dtype}")
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] <= self.max_mma_rows:
            out = self.module.gptq_mma(
                rows,
                self.perm,
                self.packed,
                self._scales_in(x.dtype),
                self.zeros,
                self.counters,
                self.group_size,
                self.n_tiles,
                self.splits,
            )
        else:
            if self.perm is not None:
                rows = rows.index_select(1, self.perm)
            out = torch.nn.functional.linear(rows, self.dense_weight(x.dtype))
        return out.reshape(*x.shape[:-1], self.out_features)

    def dense_weight(self, dtype: torch.dtype) -> Tensor:
        """The layer's ``[N, K]`` weight (rows sorted) in ``dtype``, in the shared buffer:
        valid until the next layer's call."""
        numel = self.in_features * self.out_features
        weight = dense_buffer(self.packed.device, dtype, numel)[:numel]
        weight = weight.view(self.out_features, self.in_features)
        self.module.gptq_mma_dequant(
            self.packed, self._scales_in(dtype), self.zeros, weight, self.group_size
        )
        return weight

    def input_weight(self) -> Tensor:
        """The float32 ``[K, N]`` weight in the original row order ``matmul`` takes."""
        return self.layer.dequantize_weight(torch.float32).t()

    def _scales_in(self, dtype: torch.dtype) -> Tensor:
        scales = self._scales.get(dtype)
        if scales is None:
            scales = self.layer.scales.detach().to(dtype).contiguous()
            self._scales[dtype] = scales
        return scales
