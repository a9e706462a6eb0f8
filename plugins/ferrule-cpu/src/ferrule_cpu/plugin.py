"""The ``cpu`` entry point: the CPU platform, two CPU linear kernels and an attention kernel.

Importing this module imports no torch: the kernels load in their factories and the
checks import torch when selection calls them.

- ``cpu-int4``: 2, 3 and 4-bit layers, any group size, act-order, on torch's
  ``aten._weight_int4pack_mm_for_cpu`` (torch>=2.6).
- ``cpu-int8``: 8-bit per-channel layers on ``aten._weight_int8pack_mm``.
- ``cpu-dense-onednn``: unquantized float32 layers (requests with ``bits=16``) on a
  oneDNN-prepacked weight for decode-sized batches.

Both outrank the core's reference kernel; on x86 they take bfloat16 activations only (see
:mod:`ferrule_cpu.checks`), so other dtypes and shapes they refuse fall to the reference.

- ``torch-paged-attention``: attention over the paged KV cache (prefill, chunked prefill,
  cached prefixes, decode, grouped KV heads, sliding windows) on torch's
  ``scaled_dot_product_attention`` (see :mod:`ferrule_cpu.attention`).
"""

from __future__ import annotations

from ferrule_core import KernelSpec, PlatformSpec, hookimpl
from ferrule_cpu.checks import ALL_DTYPES, check_dense, check_int4, check_int8
from ferrule_cpu.platform import always_usable, memory

KERNEL_PRIORITY = 10


def _int4_factory(layer):
    from ferrule_cpu.int4 import Int4CpuKernel

    return Int4CpuKernel(layer)


def _dense_factory(layer):
    from ferrule_cpu.dense import OneDnnDenseKernel

    return OneDnnDenseKernel(layer)


def _int8_factory(layer):
    from ferrule_cpu.int8 import Int8CpuKernel

    return Int8CpuKernel(layer)


def _attention_factory(layer):
    from ferrule_cpu.attention import TorchPagedAttention

    return TorchPagedAttention(layer)


@hookimpl
def ferrule_register_platforms():
    return [
        PlatformSpec(
            name="cpu",
            device_type="cpu",
            check=always_usable,
            memory=memory,
            distributed_backend="gloo",
            preferred_kernels=("cpu-int4", "cpu-int8"),
            priority=0,
            description="the host CPU (host memory, gloo for tensor parallelism)",
        )
    ]


@hookimpl
def ferrule_register_kernels():
    return [
        KernelSpec(
            name="cpu-int4",
            kind="linear",
            factory=_int4_factory,
            platforms=("cpu",),
            bits=(2, 3, 4),
            group_sizes=None,
            desc_act=True,
            sym=True,
            asym=True,
            dtypes=ALL_DTYPES,
            priority=KERNEL_PRIORITY,
            check=check_int4,
            description=(
                "torch's int4 CPU weight-only matmul (aten._weight_int4pack_mm_for_cpu); "
                "out_features % 16 == 0; bfloat16 activations on x86"
            ),
        ),
        KernelSpec(
            name="cpu-dense-onednn",
            kind="linear",
            factory=_dense_factory,
            platforms=("cpu",),
            bits=(16,),
            group_sizes=(-1,),
            desc_act=False,
            dtypes=("float32",),
            priority=KERNEL_PRIORITY,
            check=check_dense,
            description=(
                "unquantized float32 layers: oneDNN matmul on a prepacked weight for decode-"
                "sized batches (<= 256 rows), torch's F.linear above; keeps a packed copy"
            ),
        ),
        KernelSpec(
            name="cpu-int8",
            kind="linear",
            factory=_int8_factory,
            platforms=("cpu",),
            bits=(8,),
            group_sizes=(-1,),
            desc_act=True,
            sym=True,
            asym=True,
            dtypes=ALL_DTYPES,
            priority=KERNEL_PRIORITY,
            check=check_int8,
            description=(
                "torch's int8 CPU weight-only matmul (aten._weight_int8pack_mm), per-channel; "
                "in_features % 16 == 0; bfloat16 activations on x86"
            ),
        ),
        KernelSpec(
            name="torch-paged-attention",
            kind="attention",
            factory=_attention_factory,
            platforms=("cpu",),
            dtypes=("float16", "bfloat16", "float32", "float64"),
            head_dims=None,
            sliding_window=True,
            description=(
                "paged KV cache gathered through block tables into torch's "
                "scaled_dot_product_attention; decode batched, GQA, sliding windows"
            ),
        ),
    ]
