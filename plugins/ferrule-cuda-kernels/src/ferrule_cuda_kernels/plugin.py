"""The ``cuda`` entry point: the CUDA platform and four CUDA linear kernels.

Importing this module imports no torch: the kernels load in their factories and the checks
import torch when selection calls them.

- ``cuda-gptq-gemv``: 4- and 8-bit layers, float16 and bfloat16, a CUDA C++ GEMV that reads
  GPTQ's layout in place, preferred for 1 and 2 input rows (decode). It compiles on first use
  (needs the CUDA toolkit's nvcc and ninja, see :mod:`ferrule_cuda_kernels.extension`); where
  it cannot, it refuses with the reason and selection moves on.
- ``cuda-gptq-mma``: 4-bit layers, float16, sm_80+, a CUDA C++ tensor-core kernel on the same
  layout and extension, preferred for 3 to 8 input rows.
- ``cuda-gptq-wgmma``: 4-bit layers, float16, sm_90 (Hopper), a warp-specialized CUDA C++
  kernel on ``wgmma`` and TMA in the same extension, preferred from 3 input rows, where it is
  faster than ``cuda-gptq-mma`` and ``triton-gptq`` on an H100 on every Llama-3 layer measured.
- ``torch-int4``: 4-bit layers on torch's tensor-core ``aten._weight_int4pack_mm``, bfloat16
  activations, sm_80+; a candidate the benchmarks compare.

All declare ``sorted_groups``: act-order layers are permuted once so each group is a run of
rows, and they cost what an in-order layer does.
"""

from __future__ import annotations

from ferrule_core import KernelSpec, PlatformSpec, hookimpl
from ferrule_cuda_kernels.checks import check_gemv, check_torch_int4, check_wgmma
from ferrule_cuda_kernels.platform import capability, check, memory

GEMV_PRIORITY = 30
MMA_PRIORITY = 25
WGMMA_PRIORITY = 26  # over cuda-gptq-mma and triton-gptq on sm_90
TORCH_INT4_PRIORITY = 15
PLATFORM_PRIORITY = 20


def _gemv_factory(layer):
    from ferrule_cuda_kernels.gemv import CudaGptqGemv

    return CudaGptqGemv(layer)


def _mma_factory(layer):
    from ferrule_cuda_kernels.mma import CudaGptqMma

    return CudaGptqMma(layer)


def _wgmma_factory(layer):
    from ferrule_cuda_kernels.wgmma import CudaGptqWgmma

    return CudaGptqWgmma(layer)


def _torch_int4_factory(layer):
    from ferrule_cuda_kernels.torch_int4 import TorchInt4Kernel

    return TorchInt4Kernel(layer)


@hookimpl
def ferrule_register_platforms():
    return [
        PlatformSpec(
            name="cuda",
            device_type="cuda",
            check=check,
            memory=memory,
            capability=capability,
            distributed_backend="nccl",
            preferred_kernels=("cuda-gptq-gemv", "cuda-gptq-mma", "cuda-gptq-wgmma", "torch-int4"),
            priority=PLATFORM_PRIORITY,
            description="NVIDIA GPUs through a CUDA build of torch (device memory, nccl)",
        )
    ]


@hookimpl
def ferrule_register_kernels():
    return [
        KernelSpec(
            name="cuda-gptq-gemv",
            kind="linear",
            factory=_gemv_factory,
            platforms=("cuda",),
            bits=(4, 8),
            group_sizes=None,
            desc_act=True,
            sym=True,
            asym=True,
            dtypes=("float16", "bfloat16"),
            min_capability=(7, 0),
            priority=GEMV_PRIORITY,
            check=check_gemv,
            # One and two rows: from three on triton-gptq's tensor-core program is faster
            # (H100, 2026-11-27: 1.13-1.63x vs 1.21-1.99x fp16 at three rows).
            preferred_rows=(1, 2),
            sorted_groups=True,
            description=(
                "CUDA C++ GEMV on GPTQ's own layout, preferred for 1-2 rows (any batch, in "
                "passes of 8): "
                "16-byte weight loads, split-K, float32 accumulation (half2 products for float16 "
                "x at 4 bits), programmatic dependent launch on sm_90+; group sizes that are "
                "multiples of 32 (4-bit) or 16 (8-bit), or -1; compiled on first use (nvcc)"
            ),
        ),
        KernelSpec(
            name="cuda-gptq-mma",
            kind="linear",
            factory=_mma_factory,
            platforms=("cuda",),
            bits=(4,),
            group_sizes=None,
            desc_act=True,
            sym=True,
            asym=True,
            dtypes=("float16",),
            min_capability=(8, 0),
            priority=MMA_PRIORITY,
            check=check_gemv,  # the same extension and group layout
            # 3-8 rows: 2.1-2.6x fp16 on the large Llama layers against triton-gptq's
            # 1.8-1.9x (H100, 2026-11-27); from 16 rows triton-gptq is as fast or faster. On
            # sm_90 cuda-gptq-wgmma is faster still and serves these rows.
            preferred_rows=(3, 8),
            sorted_groups=True,
            description=(
                "CUDA C++ tensor-core kernel (mma.sync) on GPTQ's own layout, preferred for 3-8 "
                "rows (any batch, in passes of up to 64): each warp streams its own 16-byte "
                "weight loads as A fragments, x staged in shared memory, split-K, float32 sums, "
                "programmatic dependent launch on sm_90+; group sizes that are multiples of 32, "
                "or -1; compiled on first use (nvcc)"
            ),
        ),
        KernelSpec(
            name="cuda-gptq-wgmma",
            kind="linear",
            factory=_wgmma_factory,
            platforms=("cuda",),
            bits=(4,),
            group_sizes=None,
            desc_act=True,
            sym=True,
            asym=True,
            dtypes=("float16",),
            min_capability=(9, 0),
            priority=WGMMA_PRIORITY,
            check=check_wgmma,
            # H100, 2026-11-28, ratio to fp16 cuBLAS, each kernel forced in one run: from 3
            # rows as fast as or faster than cuda-gptq-mma and triton-gptq on every Llama-3
            # layer (4096x4096 at 4 / 16 / 128 rows: 1.62x / 1.71x / 0.80x against mma's
            # 1.53x / 1.22x and triton's 1.18x / 1.39x / 0.63x; 28672x8192 at 4 / 16: 3.12x /
            # 3.08x against mma's 2.74x / 2.00x); cuda-gptq-gemv stays ahead at 1-2 rows.
            preferred_rows=(3, None),
            sorted_groups=True,
            description=(
                "CUDA C++ kernel on Hopper's warpgroup MMA (wgmma, sm_90) on GPTQ's own layout, "
                "from 3 rows: warp-specialized, a producer thread streams x (as it is; "
                "act-order: gathered by the producer warps up to 4 rows, first from 5), "
                "the packed words and the group parameters by "
                "TMA into an mbarrier ring, two consumer warpgroups dequantize into wgmma's A "
                "fragments in registers; split-K; K and group sizes multiples of 64 (or -1), "
                "N of 32; compiled on first use (nvcc)"
            ),
        ),
        KernelSpec(
            name="torch-int4",
            kind="linear",
            factory=_torch_int4_factory,
            platforms=("cuda",),
            bits=(4,),
            group_sizes=None,
            desc_act=True,
            sym=True,
            asym=True,
            dtypes=("bfloat16",),
            min_capability=(8, 0),
            priority=TORCH_INT4_PRIORITY,
            check=check_torch_int4,
            sorted_groups=True,
            description=(
                "torch's tensor-core int4 matmul (aten._weight_int4pack_mm, torch>=2.5) on a "
                "repacked copy; groups of multiples of 32 rows; bfloat16 activations"
            ),
        ),
    ]
