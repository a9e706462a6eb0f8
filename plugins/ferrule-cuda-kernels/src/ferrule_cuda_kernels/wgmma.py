"""``cuda-gptq-wgmma``: a CUDA C++ kernel on Hopper's warpgroup MMA for 3+ rows.

``y = x[..., input_perm] @ W_sorted`` for 4-bit layers and float16 activations on sm_90,
reading ``qweight``, ``qzeros`` and ``scales`` as the layer holds them, like
:mod:`ferrule_cuda_kernels.mma` (the same extension and checks). The kernel
(``csrc/gptq_wgmma.cu``, whose header comment gives the design) is warp-specialized: a producer
thread streams ``x``, the packed words and the group parameters by TMA into a ring of
shared-memory stages, and two consumer warpgroups dequantize the words straight into wgmma's A
fragments, each thread taking from every word the byte of the rows its fragments hold, so
``x`` is read as it is. Act-order layers of up to 4 rows have the producer warps gather
``x[:, input_perm]`` into the stages themselves; more rows gather it once first, by a kernel
of its own (models fold most act-order permutations away at load: see
``ferrule_engine.layers.input_order``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ferrule_cuda_kernels.gemv import CudaGptqGemv


class CudaGptqWgmma(CudaGptqGemv):
    """``forward(x) = x @ W`` for a 4-bit ``QuantLinear`` and float16 ``x`` on an sm_90 device."""

    name = "cuda-gptq-wgmma"
    dtypes = (torch.float16,)
    bit_widths = (4,)

    def __init__(self, layer: torch.nn.Module):
        super().__init__(layer)
        # 0: the kernel's plan chooses; benchmarks may force them (tiles, m64 tiles a consumer:
        # 1 or 2 at 64 and 128 rows, forced only with tokens).
        self.tokens = 0
        self.tiles = 0
        self.splits = 0
        # Act-order rows up to 4: the kernel's producer warps gather x through perm themselves
        # instead of a gather kernel first (on an H100, 3-4 rows: as fast or up to 15% faster
        # than gathering first). False: always gather first.
        self.gather_in_kernel = True
        # Split-K finished in thread block clusters, the tile's splits adding up through each
        # other's shared memory instead of a float32 workspace: 1 where the plan estimates it
        # faster, 0 never, 2 wherever it can (benchmarks).
        self.clusters = 1

    def _launch(self, rows: Tensor, scales: Tensor) -> Tensor:
        return self.module.gptq_wgmma(
            rows, self.perm, self.qweight, self.qzeros, scales, self.counters, self.group_size,
            self.tokens, self.tiles, self.splits, self.gather_in_kernel, self.clusters,
        )  # fmt: skip
