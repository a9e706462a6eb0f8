"""Refusals the capability data cannot express: a missing torch op, shapes, slow dtypes.

Each ``check_*`` is a ``KernelSpec.check``: ``None`` when the kernel serves the request,
else a reason a user can act on. They import torch only when called (selection time).

Why activations other than bfloat16 are refused on x86: torch's CPU weight-only kernels
(``aten/src/ATen/native/cpu/int4mm_kernel.cpp`` and ``int8mm_kernel.cpp``) have AVX2 and
AVX512 code only for bfloat16; float16 and float32 fall to a scalar loop. Measured with
torch 2.13 on a 2-core AVX2 EPYC, 4096x4096 at batch 1: int4 bfloat16 1.2 ms, float32
40 ms, float16 60 ms (a dense float32 ``linear`` takes 2.4 ms), and the scalar loop grows
with the batch (830 ms at batch 16). The aarch64 build has NEON code for all three dtypes.
"""

from __future__ import annotations

import platform

from ferrule_core.specs import KernelRequest

INT4_OPS = ("_convert_weight_to_int4pack_for_cpu", "_weight_int4pack_mm_for_cpu")
INT8_OPS = ("_weight_int8pack_mm",)
ALL_DTYPES = ("bfloat16", "float16", "float32")
# torch packs int4 weights in blocks of 16 output features (_convert_weight_to_int4pack_cpu).
INT4_N_MULTIPLE = 16
# The x86 bfloat16 int8 kernel walks K in steps of 8 (AVX2) or 16 (AVX512) with no tail
# loop: other K read past the row and crash the process (seen here with K=20).
INT8_K_MULTIPLE = 16


def vectorized_dtypes(machine: str | None = None) -> tuple[str, ...]:
    """Activation dtypes with a SIMD path in torch's CPU weight-only kernels on ``machine``."""
    machine = (machine if machine is not None else platform.machine()).lower()
    return ALL_DTYPES if machine in ("aarch64", "arm64") else ("bfloat16",)


def check_int4(request: KernelRequest) -> str | None:
    n = request.out_features
    if reason := _missing_ops(INT4_OPS, "2.6"):
        return reason
    if n and n % INT4_N_MULTIPLE:
        return (
            f"torch packs int4 weights in blocks of {INT4_N_MULTIPLE} output features; "
            f"out_features={n} is not a multiple of {INT4_N_MULTIPLE}"
        )
    return _dtype_reason(request, "_weight_int4pack_mm_for_cpu")


def check_int8(request: KernelRequest) -> str | None:
    k = request.in_features
    if reason := _missing_ops(INT8_OPS, "2.4"):
        return reason
    if k and k % INT8_K_MULTIPLE:
        return (
            f"torch's int8 CPU kernel needs in_features divisible by {INT8_K_MULTIPLE} "
            f"(it has no tail loop), got {k}"
        )
    return _dtype_reason(request, "_weight_int8pack_mm")


def _missing_ops(names: tuple[str, ...], version: str) -> str | None:
    import torch

    missing = [name for name in names if not hasattr(torch.ops.aten, name)]
    if missing:
        return (
            f"needs torch>={version} for aten.{', aten.'.join(missing)} "
            f"(installed: torch {torch.__version__})"
        )
    return None


def _dtype_reason(request: KernelRequest, op: str) -> str | None:
    fast = vectorized_dtypes()
    if request.dtype in fast:
        return None
    return (
        f"torch's aten.{op} is vectorized on {platform.machine() or 'this machine'} only for "
        f"{', '.join(fast)} activations; {request.dtype} would run its scalar loop (about 15x "
        "slower than a dense float32 matmul at batch 1, worse as the batch grows). Cast "
        "activations to bfloat16 to use it"
    )


def check_dense(request: KernelRequest) -> str | None:
    """``cpu-dense-onednn``: needs oneDNN's prepacked linear in this torch build."""
    from ferrule_cpu.dense import onednn_unavailable

    return onednn_unavailable()
