"""The ``triton`` entry point: a GPTQ linear kernel and a paged-attention kernel in Triton.

Importing this module imports neither torch nor triton: the kernels load in their
factories and :mod:`ferrule_triton_kernels.checks` imports triton when selection asks.

- ``triton-gptq``: GPTQ layers of 2, 3, 4 and 8 bits, any group size, act-order (rows
  sorted by group once, activations gathered inside the kernel), symmetric and asymmetric
  grids; a split-K program for small batches and a tiled GEMM for large ones (see
  :mod:`ferrule_triton_kernels.linear`).
- ``triton-paged-attention``: varlen attention over the paged KV cache (prefill, chunked
  prefill, cached prefixes, decode, grouped KV heads, sliding windows) with a fused
  ``write_kv`` (see :mod:`ferrule_triton_kernels.attention`).

- ``triton-rmsnorm``, ``triton-rotary`` and ``triton-silu-mul``: fused helpers of the engine's
  layers (RMSNorm with the residual add, rotary embedding of queries and keys in place, a gated
  MLP's ``silu(gate) * up``), one launch each instead of about seven, twenty and two torch
  kernels (see :mod:`.fused_norm`, :mod:`.fused_rotary`, :mod:`.fused_act`).

All run on CUDA and ROCm GPUs, and on CPU tensors in Triton's interpreter when
``TRITON_INTERPRET=1`` (for tests).
"""

from __future__ import annotations

from ferrule_core import KernelSpec, hookimpl
from ferrule_triton_kernels.checks import (
    check_activation,
    check_attention,
    check_linear,
    check_platform,
)

PLATFORMS = ("cuda", "rocm", "cpu")  # cpu: only in the interpreter (see checks.py)
LINEAR_PRIORITY = 20
ATTENTION_PRIORITY = 20
FUSED_PRIORITY = 20
HEAD_DIMS = (64, 80, 96, 128, 256)


def _linear_factory(layer):
    from ferrule_triton_kernels.linear import TritonGptqLinear

    return TritonGptqLinear(layer)


def _norm_factory(layer):
    from ferrule_triton_kernels.fused_norm import TritonRMSNorm

    return TritonRMSNorm(layer)


def _rotary_factory(layer):
    from ferrule_triton_kernels.fused_rotary import TritonRotary

    return TritonRotary(layer)


def _silu_mul_factory(layer):
    from ferrule_triton_kernels.fused_act import TritonSiluMul

    return TritonSiluMul(layer)


def _attention_factory(layer):
    from ferrule_triton_kernels.attention import TritonPagedAttention

    return TritonPagedAttention(layer)


def _fused(name, kind, factory, description, *, check=check_platform):
    """A fused helper's spec: every float dtype, wherever Triton runs."""
    return KernelSpec(
        name=name,
        kind=kind,
        factory=factory,
        platforms=PLATFORMS,
        dtypes=("float16", "bfloat16", "float32"),
        priority=FUSED_PRIORITY,
        check=check,
        description=description,
    )


@hookimpl
def ferrule_register_kernels():
    return [
        KernelSpec(
            name="triton-gptq",
            kind="linear",
            factory=_linear_factory,
            platforms=PLATFORMS,
            bits=(2, 3, 4, 8),
            group_sizes=None,
            desc_act=True,
            sym=True,
            asym=True,
            dtypes=("float16", "bfloat16", "float32"),
            priority=LINEAR_PRIORITY,
            check=check_linear,
            preferred_rows=(1, None),
            sorted_groups=True,
            description=(
                "Triton GPTQ matmul reading the packed weight in place, transposed tensor-core "
                "tiles: split-K up to 256 rows, tiled GEMM above; any bits/group size, act-order"
            ),
        ),
        KernelSpec(
            name="triton-paged-attention",
            kind="attention",
            factory=_attention_factory,
            platforms=PLATFORMS,
            dtypes=("float16", "bfloat16", "float32"),
            priority=ATTENTION_PRIORITY,
            check=check_attention,
            head_dims=HEAD_DIMS,
            sliding_window=True,
            description=(
                "Triton varlen attention over the paged KV cache through block tables; "
                "online softmax, GQA groups share K/V reads, graph-safe decode path"
            ),
        ),
        _fused(
            "triton-rmsnorm",
            "norm",
            _norm_factory,
            "RMSNorm with the residual add fused, one program per row",
        ),
        _fused(
            "triton-rotary",
            "rotary",
            _rotary_factory,
            "rotary embedding of queries and keys in place (neox and GPT-J styles)",
        ),
        _fused(
            "triton-silu-mul",
            "activation",
            _silu_mul_factory,
            "a gated MLP's silu(gate) * up from the merged [gate | up] rows",
            check=check_activation,
        ),
    ]
