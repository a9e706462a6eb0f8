"""Refusals the capability data cannot express: group shapes, torch ops, a missing compiler.

Each ``check_*`` is a ``KernelSpec.check``: ``None`` when the kernel serves the request, else a
reason a user can act on. They import torch only when called (selection time). Selection has
already matched the platform, bits, dtype and capability from the spec's data.
"""

from __future__ import annotations

from ferrule_core.specs import KernelRequest
from ferrule_cuda_kernels.groups import group_rows, op_group_size

# Rows of K that share one scale load in cuda-gptq-gemv (csrc/gptq_gemv.h: unit_rows).
GEMV_UNIT_ROWS = {4: 32, 8: 16}
INT4_OPS = ("_convert_weight_to_int4pack", "_weight_int4pack_mm")
# Before 2.5 the CUDA _convert_weight_to_int4pack took int32 codes [N, K], not uint8 [N, K/2].
INT4_MIN_TORCH = (2, 5)


def gemv_group_problem(request: KernelRequest) -> str | None:
    """Why ``cuda-gptq-gemv``'s groups cannot serve ``request``, or ``None``."""
    unit = GEMV_UNIT_ROWS.get(request.bits)
    if unit is None:
        return f"serves 4- and 8-bit layers, not {request.bits}-bit"
    size = request.group_size
    k = request.in_features
    if size == -1 or (k and size >= k) or size % unit == 0:
        return None
    return (
        f"reads one scale per {unit} rows at {request.bits} bits, so the group size must be "
        f"a multiple of {unit} (or -1), not {size}"
    )


def check_gemv(request: KernelRequest) -> str | None:
    """``cuda-gptq-gemv`` and ``cuda-gptq-mma`` (one extension, the same groups): group
    sizes, then the extension (built here on first use)."""
    if reason := gemv_group_problem(request):
        return reason
    if request.out_features % 4:
        return f"loads 4 output columns at a time; out_features={request.out_features}"
    from ferrule_cuda_kernels import extension

    return extension.build_problem(_capability(request))


# cuda-gptq-wgmma steps through K 64 rows at a time, one group of scales a step.
WGMMA_STEP_ROWS = 64
WGMMA_COLUMNS = 32


def check_wgmma(request: KernelRequest) -> str | None:
    """``cuda-gptq-wgmma``: an sm_90 device (its ``sm_90a`` build), K and groups in steps of
    64 rows, N a multiple of 32, then what ``check_gemv`` checks."""
    capability = _capability(request)
    if capability != (9, 0):
        return (
            "runs Hopper's wgmma, built for sm_90a, whose code runs only on sm_90 devices; "
            f"this one is sm_{capability[0]}{capability[1]}"
        )
    k, size = request.in_features, request.group_size
    if k % WGMMA_STEP_ROWS:
        return f"steps through K {WGMMA_STEP_ROWS} rows at a time; in_features={k}"
    if request.out_features % WGMMA_COLUMNS:
        return (
            f"copies rows of the zero points by TMA, which need out_features to be a multiple "
            f"of {WGMMA_COLUMNS}; out_features={request.out_features}"
        )
    if size != -1 and size < k and size % WGMMA_STEP_ROWS:
        return (
            f"reads one scale per {WGMMA_STEP_ROWS} rows, so the group size must be a multiple "
            f"of {WGMMA_STEP_ROWS} (or -1), not {size}"
        )
    return check_gemv(request)


def int4_group_problem(request: KernelRequest) -> str | None:
    """Why torch's int4 op cannot serve ``request``'s group layout, or ``None``."""
    if not request.in_features:
        return None
    rows = group_rows(request.in_features, request.group_size)
    if op_group_size(rows) is None:
        group = "per-channel" if request.group_size == -1 else f"group_size={request.group_size}"
        return (
            "torch's int4 op applies one scale per 32, 64, 128 or 256 rows; every group must "
            f"be a multiple of 32 rows, but {group} with in_features={request.in_features} "
            f"makes groups of {sorted(set(rows))} rows"
        )
    return None


def check_torch_int4(request: KernelRequest) -> str | None:
    """``torch-int4``: torch's ops and their uint8 packing, then the group layout."""
    import torch

    missing = [name for name in INT4_OPS if not hasattr(torch.ops.aten, name)]
    if missing or _torch_version(torch.__version__) < INT4_MIN_TORCH:
        need = ".".join(map(str, INT4_MIN_TORCH))
        return (
            f"needs torch>={need} for aten._weight_int4pack_mm with uint8-packed weights "
            f"(installed: torch {torch.__version__})"
        )
    if request.out_features % 8:
        return (
            f"torch packs int4 weights in tiles of 8 columns; out_features={request.out_features}"
        )
    return int4_group_problem(request)


def _capability(request: KernelRequest) -> tuple[int, int]:
    if request.capability is not None:
        return tuple(request.capability)
    import torch

    return tuple(torch.cuda.get_device_capability())


def _torch_version(version: str) -> tuple[int, int]:
    parts = version.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)
