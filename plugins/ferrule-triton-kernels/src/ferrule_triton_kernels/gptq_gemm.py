"""The large-batch program of ``triton-gptq``: a tiled GEMM that dequantizes W in registers.

Each program computes a ``BLOCK_M x BLOCK_N`` tile of the output over the whole of K, as its
transpose: per ``BLOCK_K`` step it loads the activation tile transposed, ``[BLOCK_K,
BLOCK_M]`` (gathered through ``input_perm`` under act-order), loads the packed weight tile
once, unpacks and dequantizes it to the activation dtype
(:func:`~ferrule_triton_kernels.dequant.weight_tile`), and accumulates ``tl.dot(W^T, x^T)``
in a float32 ``[BLOCK_N, BLOCK_M]`` tile (:func:`~ferrule_triton_kernels.dequant.dot_step_t`),
stored at the end as ``out[m, n] = acc[n, m]``; ``num_stages`` pipelines the loads. With the
weight as the left operand the tensor cores can take it where it was dequantized and the
activations stream through shared memory (why, and the H100 numbers - 0.60-0.72x of fp16
cuBLAS at M = 256 to 1024 against 0.45-0.55x untransposed - are in
:mod:`ferrule_triton_kernels.dequant`). Programs are ordered in groups of ``GROUP_M`` M
tiles that walk the N tiles together, so a weight tile is still in L2 when the next M tile
of the group reads it (the experiment behind those numbers launched a plain grid, N tiles
fastest; this order is not yet timed with the transposed tile). Each weight tile is
dequantized once per M tile, which the ``BLOCK_M`` rows of tensor-core work amortize.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ferrule_triton_kernels.configs import TileConfig
from ferrule_triton_kernels.dequant import dot_step_t
from ferrule_triton_kernels.operands import GptqOperands, dot_precision


@triton.jit(do_not_specialize=["M"])  # one compile for every row count
def gptq_gemm_kernel(
    x_ptr,
    perm_ptr,
    qweight_ptr,
    scales_ptr,
    zeros_ptr,
    g_idx_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_xk: tl.constexpr,
    BITS: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    GROUP_MODE: tl.constexpr,
    ZERO: tl.constexpr,
    HAS_PERM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``out[tile] = x[tile rows] @ W[:, tile cols]``, computed as its transpose; ``out``
    ``[M, N]`` contiguous."""
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    rows = offs_m.to(tl.int64)  # M * K may pass 2**31 in a long prefill
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)  # transposed: acc[n, m]
    for k0 in range(0, K, BLOCK_K):
        acc = dot_step_t(
            acc, x_ptr, perm_ptr, qweight_ptr, scales_ptr, zeros_ptr, g_idx_ptr, rows, m_mask,
            k0, offs_n, n_mask, K, N, stride_xm, stride_xk,
            BITS, BLOCK_K, BLOCK_N, GROUP_SIZE, GROUP_MODE, ZERO, HAS_PERM, PRECISION,
        )  # fmt: skip
    out = out_ptr + rows[None, :] * N + offs_n[:, None]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=n_mask[:, None] & m_mask[None, :])


def gemm(x: Tensor, operands: GptqOperands, config: TileConfig) -> Tensor:
    """``x [M, K] @ W`` with the tiled program; ``x`` may have any strides.

    Returns ``[M, N]`` in ``x``'s dtype.
    """
    m = x.shape[0]
    k, n = operands.in_features, operands.out_features
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n),)
    gptq_gemm_kernel[grid](
        x,
        *operands.launch_args(),
        out,
        m,
        n,
        k,
        x.stride(0),
        x.stride(1),
        **operands.constants(config.block_k),
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        GROUP_M=config.group_m,
        PRECISION=dot_precision(x.dtype),
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return out
