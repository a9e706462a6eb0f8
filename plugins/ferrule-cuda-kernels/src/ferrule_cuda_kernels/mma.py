"""``cuda-gptq-mma``: GPTQ 4-bit layers on the tensor cores for 3 to 64 rows of float16 ``x``.

The kernel (``csrc/gptq_mma.cu``, whose header comment gives the fragment mapping) reads
``qweight``, ``qzeros`` and ``scales`` in place like ``cuda-gptq-gemv``, with whom it shares
the extension, the split-K counters and the binding's checks: it loads each lane's A fragment
straight from GPTQ's words, dequantizes it to float16 in registers, and multiplies 16, 32 or 64
rows of ``x`` at a time with ``mma.sync`` (float32 accumulation). ``x`` is gathered through the
layer's ``input_perm`` as it is staged (``handles_input_perm``), so act-order layers need no
separate gather. Correct at any batch (more than 64 rows run as more blocks); preferred for
3-64 rows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ferrule_cuda_kernels.gemv import CudaGptqGemv


class CudaGptqMma(CudaGptqGemv):
    """``forward(x) = x @ W`` for a 4-bit ``QuantLinear`` and float16 ``x`` on a CUDA device."""

    name = "cuda-gptq-mma"

    def __init__(self, layer: torch.nn.Module):
        if layer.bits != 4:
            raise ValueError(f"cuda-gptq-mma serves 4-bit layers, not {layer.bits}-bit")
        super().__init__(layer)

    def matmul(self, x: Tensor) -> Tensor:
        if x.dtype != torch.float16:
            raise TypeError(f"cuda-gptq-mma takes float16 activations, got {x.dtype}")
        return super().matmul(x)

    def _launch(self, rows: Tensor, scales: Tensor) -> Tensor:
        return self.module.gptq_mma(
            rows, self.perm, self.qweight, self.qzeros, scales, self.counters, self.group_size
        )
