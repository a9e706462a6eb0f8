"""The small-batch program of ``triton-gptq``: all rows in one tile, K split across programs.

With few input rows the matmul is bound by reading the packed weight, so every word must be
read once per call and every SM kept streaming. The grid is ``(N / BLOCK_N, split_k,
M / BLOCK_M)``: a program owns ``BLOCK_N`` output columns, one of ``split_k`` contiguous
slices of K (a whole number of ``BLOCK_K`` blocks), and ``BLOCK_M >= M`` rows, so the
weight is read by exactly one program. Rows are padded to 16 with masked loads for
``tl.dot``, which runs transposed (:func:`~ferrule_triton_kernels.dequant.dot_step_t`):
``acc[BLOCK_N, BLOCK_M] += W^T @ x^T`` with the dequantized weight as the left operand, so
the tensor cores' 64-row side is filled by ``BLOCK_N`` output columns rather than by padded
rows, and the weight can skip shared memory; the partial is stored as ``out[m, n] =
acc[n, m]``. On an H100 that made M = 16 1.91x as fast as fp16 cuBLAS (0.9x untransposed)
and M = 64 1.35x (details in :mod:`ferrule_triton_kernels.dequant`). At M = 1 (``BLOCK_M =
1``) the program multiplies in float32 and reduces instead: it keeps ``[BLOCK_K / PACK,
BLOCK_N]`` partial sums, adding each word's ``PACK`` products within the thread that
unpacked them, and sums over K once at the end. Triton pipelines only loads that feed
``tl.dot`` by itself, so that loop asks for ``num_stages`` explicitly (``tl.range``): the
weight words then stream through shared memory with ``cp.async``.

Summing the slices. Each slice stores its float32 ``[M, N]`` partial into ``[split_k, M, N]``
and :func:`sum_slices_kernel` adds them and casts to the activation dtype: one extra launch.
The alternative, float32 atomics into a zeroed buffer, needs a fill before and a cast after
(two extra launches) and an order-dependent sum; the partials (``split_k * M * N * 4``
bytes, a few MB at most) stay in L2. With ``split_k = 1`` the program stores the output
directly. (The H100 experiment behind the numbers above summed with atomics into a float32
output, fill included, cast not.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ferrule_triton_kernels.configs import TileConfig, k_per_split
from ferrule_triton_kernels.dequant import (
    dot_step_t,
    generic_weights,
    packed_rows,
    packed_weights,
    source_cols,
)
from ferrule_triton_kernels.operands import GptqOperands, dot_precision

SUM_BLOCK = 1024


@triton.jit
def _row_times_weights(
    x_ptr,
    perm_ptr,
    qweight_ptr,
    scales_ptr,
    zeros_ptr,
    g_idx_ptr,
    row,
    k_start,
    k_per_slice,
    offs_n,
    n_mask,
    K,
    N,
    stride_xm,
    stride_xk: tl.constexpr,
    BITS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    GROUP_MODE: tl.constexpr,
    ZERO: tl.constexpr,
    HAS_PERM: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """``x[row, slice] @ W[slice, offs_n]`` in float32 without ``tl.dot`` (slice: ``k_per_slice``
    rows from ``k_start``, clipped to K)."""
    x_row = x_ptr + row * stride_xm
    if 32 % BITS == 0:
        acc = tl.zeros((BLOCK_K // (32 // BITS), BLOCK_N), dtype=tl.float32)
        for step in tl.range(0, k_per_slice, BLOCK_K, num_stages=NUM_STAGES):
            k0 = k_start + step
            k = packed_rows(k0, BITS, BLOCK_K)
            k_mask = k < K
            cols = source_cols(perm_ptr, k, k_mask, HAS_PERM)
            x = tl.load(x_row + cols * stride_xk, mask=k_mask, other=0.0).to(tl.float32)
            w = packed_weights(
                qweight_ptr, scales_ptr, zeros_ptr, g_idx_ptr, k0, offs_n, n_mask, K, N,
                BITS, BLOCK_K, BLOCK_N, GROUP_SIZE, GROUP_MODE, ZERO, tl.float32,
            )  # fmt: skip
            acc += tl.sum(x[:, :, None] * w, axis=1)
    else:
        acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
        for step in tl.range(0, k_per_slice, BLOCK_K, num_stages=NUM_STAGES):
            k0 = k_start + step
            k = k0 + tl.arange(0, BLOCK_K)
            k_mask = k < K
            cols = source_cols(perm_ptr, k, k_mask, HAS_PERM)
            x = tl.load(x_row + cols * stride_xk, mask=k_mask, other=0.0).to(tl.float32)
            w = generic_weights(
                qweight_ptr, scales_ptr, zeros_ptr, g_idx_ptr, k0, offs_n, n_mask, K, N,
                BITS, BLOCK_K, GROUP_SIZE, GROUP_MODE, ZERO, tl.float32,
            )  # fmt: skip
            acc += x[:, None] * w
    return tl.sum(acc, axis=0)


@triton.jit(do_not_specialize=["M"])  # one compile for every row count
def gptq_gemv_kernel(
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
    k_per_slice,
    BITS: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    GROUP_MODE: tl.constexpr,
    ZERO: tl.constexpr,
    HAS_PERM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """``out[slice] = x[:, slice] @ W[slice, :]`` for this program's K slice and N block.

    ``out`` is ``[split_k, M, N]`` float32 partials, or the ``[M, N]`` output itself when
    there is one slice; the store casts to its dtype.
    """
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    # Every slice runs the same trip count (a launch argument, so loop bounds never come from
    # program ids); blocks of the last slice past K are fully masked.
    k_start = pid_k * k_per_slice
    out_ptr += pid_k * M * N
    if BLOCK_M == 1:
        acc = _row_times_weights(
            x_ptr, perm_ptr, qweight_ptr, scales_ptr, zeros_ptr, g_idx_ptr, pid_m, k_start,
            k_per_slice, offs_n, n_mask, K, N, stride_xm, stride_xk,
            BITS, BLOCK_K, BLOCK_N, GROUP_SIZE, GROUP_MODE, ZERO, HAS_PERM, NUM_STAGES,
        )  # fmt: skip
        tl.store(out_ptr + pid_m * N + offs_n, acc.to(out_ptr.dtype.element_ty), mask=n_mask)
    else:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        m_mask = offs_m < M
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)  # transposed: acc[n, m]
        for step in range(0, k_per_slice, BLOCK_K):
            acc = dot_step_t(
                acc, x_ptr, perm_ptr, qweight_ptr, scales_ptr, zeros_ptr, g_idx_ptr, offs_m,
                m_mask, k_start + step, offs_n, n_mask, K, N, stride_xm, stride_xk,
                BITS, BLOCK_K, BLOCK_N, GROUP_SIZE, GROUP_MODE, ZERO, HAS_PERM, PRECISION,
            )  # fmt: skip
        out = out_ptr + offs_m[None, :] * N + offs_n[:, None]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=n_mask[:, None] & m_mask[None, :])


@triton.jit(do_not_specialize=["numel"])
def sum_slices_kernel(partial_ptr, out_ptr, numel, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
    """``out = partial.sum(0)`` over ``[SPLIT_K, numel]`` float32, cast to ``out``'s dtype."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        total += tl.load(partial_ptr + s * numel + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, total.to(out_ptr.dtype.element_ty), mask=mask)


def gemv(x: Tensor, operands: GptqOperands, config: TileConfig) -> Tensor:
    """``x [M, K] @ W`` with the small-batch program; ``x`` may have any strides.

    ``config`` comes from :func:`~ferrule_triton_kernels.configs.configs_for` (``split_k``
    resolved). Returns ``[M, N]`` in ``x``'s dtype.
    """
    m = x.shape[0]
    k, n = operands.in_features, operands.out_features
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    split = config.split_k
    target = out if split == 1 else torch.empty(split, m, n, dtype=torch.float32, device=x.device)
    rows = m if config.block_m == 1 else triton.cdiv(m, config.block_m)
    grid = (triton.cdiv(n, config.block_n), split, rows)
    gptq_gemv_kernel[grid](
        x,
        *operands.launch_args(),
        target,
        m,
        n,
        k,
        x.stride(0),
        x.stride(1),
        k_per_split(config, k),
        **operands.constants(config.block_k),
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        PRECISION=dot_precision(x.dtype),
        NUM_STAGES=config.num_stages,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    if split > 1:
        numel = m * n
        sum_slices_kernel[(triton.cdiv(numel, SUM_BLOCK),)](
            target, out, numel, SPLIT_K=split, BLOCK=SUM_BLOCK
        )
    return out
