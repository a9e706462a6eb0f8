"""``cuda-gptq-mma``: a CUDA C++ tensor-core kernel over GPTQ's own layout for a few rows.

``y = x[..., input_perm] @ W_sorted`` for 4-bit layers and float16 activations on sm_80+,
reading ``qweight``, ``qzeros`` and ``scales`` as the layer holds them, like
:mod:`ferrule_cuda_kernels.gemv` (the same extension, the same checks of the tensors). The
kernel (``csrc/gptq_mma.cu``, whose header comment gives the fragment mapping) streams the
weight once per 8, 16, 32 or 64 rows of ``x`` with 16-byte loads and multiplies on the tensor
cores (``mma.sync`` m16n8k16, float32 sums): each thread's packed words are its A fragments
once dequantized, so the weight never passes through shared memory; ``x`` is staged there
(gathered through ``input_perm`` under act-order). Correct at any batch; preferred for 3 to 8
rows, where it beats triton-gptq on an H100.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ferrule_cuda_kernels.gemv import CudaGptqGemv


class CudaGptqMma(CudaGptqGemv):
    """``forward(x) = x @ W`` for a 4-bit ``QuantLinear`` and float16 ``x`` on a CUDA device."""

    name = "cuda-gptq-mma"
    dtypes = (torch.float16,)
    bit_widths = (4,)

    def __init__(self, layer: torch.nn.Module):
        super().__init__(layer)
        # 0: the kernel's plan chooses; benchmarks may force them.
        self.warps_k = 0
        self.splits = 0

    def _launch(self, rows: Tensor, scales: Tensor) -> Tensor:
        return self.module.gptq_mma(
            rows, self.perm, self.qweight, self.qzeros, scales, self.counters, self.group_size,
            self.warps_k, self.splits,
        )  # fmt: skip
