"""``x[:, perm]`` for act-order layers at two or more rows: one Triton launch.

``triton-gptq`` gathers the activations through the layer's ``input_perm`` once before its
programs run (gathering inside the tile loop keeps Triton from pipelining the loads of ``x``).
Two programs do it:

- a few rows (fewer than ``WHOLE_ROW_FROM``): one program per (row, block of columns) reads
  ``perm``, gathers ``x`` from the caches and writes the output contiguously; many programs
  keep a small gather short. Each 2-byte gather touches its own 32-byte sector, and the
  programs sharing a row run on different multiprocessors, so every row is read from L2 many
  times over: on an H100 this took 450 us for 1024 rows of 28,672 (act-order 1.5x slower than
  in-order at that size);
- many rows: one program per row loads the whole row once (coalesced), and ``tl.gather``
  permutes it on chip (through shared memory: ``K`` values of the row's dtype, at most
  ``WHOLE_ROW_BYTES``); every row is read from memory once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK = 1024
WHOLE_ROW_FROM = 64  # rows from which a program gathers a whole row on chip
WHOLE_ROW_BYTES = 64 * 1024  # the row's shared-memory copy: K up to 32,768 in float16


@triton.jit(do_not_specialize=["stride_xm"])
def _gather_columns_kernel(x_ptr, perm_ptr, out_ptr, K, stride_xm, stride_xk, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < K
    src = tl.load(perm_ptr + cols, mask=mask, other=0)
    values = tl.load(x_ptr + row * stride_xm + src.to(tl.int64) * stride_xk, mask=mask)
    tl.store(out_ptr + row * K + cols, values, mask=mask)


@triton.jit(do_not_specialize=["stride_xm"])
def _gather_whole_rows_kernel(x_ptr, perm_ptr, out_ptr, K, stride_xm, stride_xk, ROW: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, ROW)
    mask = cols < K
    values = tl.load(x_ptr + row * stride_xm + cols * stride_xk, mask=mask, other=0)
    src = tl.load(perm_ptr + cols, mask=mask, other=0).to(tl.int32)
    tl.store(out_ptr + row * K + cols, tl.gather(values, src, 0), mask=mask)


def gather_columns(x: Tensor, perm: Tensor, whole_row_from: int = WHOLE_ROW_FROM) -> Tensor:
    """``x[:, perm]`` for a 2-D ``x`` (any strides) and an int32 or int64 ``perm`` of ``K``.

    ``whole_row_from`` is the number of rows from which each row is gathered whole on chip
    (where it fits ``WHOLE_ROW_BYTES``).
    """
    rows, k = x.shape
    out = torch.empty(rows, k, dtype=x.dtype, device=x.device)
    if not rows:
        return out
    row = triton.next_power_of_2(k)
    if rows >= whole_row_from and row * x.element_size() <= WHOLE_ROW_BYTES:
        warps = max(4, min(16, row // 2048))  # 8 to 64 values a thread at the largest rows
        _gather_whole_rows_kernel[(rows,)](
            x, perm, out, k, x.stride(0), x.stride(1), ROW=row, num_warps=warps
        )
    else:
        grid = (rows, triton.cdiv(k, BLOCK))
        _gather_columns_kernel[grid](x, perm, out, k, x.stride(0), x.stride(1), BLOCK=BLOCK)
    return out
