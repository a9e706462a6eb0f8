"""``cuda-gptq-wgmma``: a CUDA C++ kernel on Hopper's warpgroup MMA for 3+ rows (by layer shape).

``y = x[..., input_perm] @ W_sorted`` for 4-bit layers and float16 activations on sm_90,
reading ``qweight``, ``qzeros`` and ``scales`` as the layer holds them, like
:mod:`ferrule_cuda_kernels.mma` (the same extension and checks). The kernel
(``csrc/gptq_wgmma.cu``, whose header comment gives the design) is warp-specialized: a producer
thread streams ``x``, the packed words and the group parameters by TMA into a ring of
shared-memory stages, and two consumer warpgroups dequantize the words straight into wgmma's A
fragments. ``x`` first goes into the K order the fragments take (:func:`kernel_order`): in
order by a shuffle within each 32 rows, under act-order through ``input_perm`` folded with that
order, so act-order layers cost what in-order ones do.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ferrule_cuda_kernels.gemv import CudaGptqGemv


def kernel_order(in_features: int) -> Tensor:
    """Position ``i`` of the kernel's K order holds row ``kernel_order(K)[i]`` of K.

    Within every 32 rows (one unit: 4 packed words a column), position ``16 s + 8 h + 2 t + e``
    holds row ``8 t + 2 s + h + 4 e``: the codes a thread's A fragments hold for K step ``s``
    (``t`` the thread's word, ``h`` the register pair, ``e`` the half).
    """
    if in_features % 32:
        raise ValueError(f"the K order covers units of 32 rows; in_features={in_features}")
    at = torch.arange(in_features)
    within = at % 32
    s, h, t, e = within // 16, (within // 8) % 2, (within % 8) // 2, within % 2
    return at - within + 8 * t + 2 * s + h + 4 * e


class CudaGptqWgmma(CudaGptqGemv):
    """``forward(x) = x @ W`` for a 4-bit ``QuantLinear`` and float16 ``x`` on an sm_90 device."""

    name = "cuda-gptq-wgmma"
    dtypes = (torch.float16,)
    bit_widths = (4,)

    def __init__(self, layer: torch.nn.Module):
        super().__init__(layer)
        # Act-order: x is gathered through perm folded with the kernel's K order; in order, the
        # extension shuffles each 32 rows into that order itself (order None).
        self.order = None
        if self.perm is not None:
            order = kernel_order(self.in_features).to(layer.qweight.device)
            self.order = self.perm[order].to(torch.int32).contiguous()
        # 0: the kernel's plan chooses; benchmarks may force them.
        self.tokens = 0
        self.splits = 0

    def _launch(self, rows: Tensor, scales: Tensor) -> Tensor:
        return self.module.gptq_wgmma(
            rows, self.order, self.qweight, self.qzeros, scales, self.counters, self.group_size,
            self.tokens, self.splits,
        )  # fmt: skip
