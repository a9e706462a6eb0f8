"""``x[:, perm]`` for act-order layers at two or more rows: one Triton launch.

``triton-gptq`` gathers the activations through the layer's ``input_perm`` once before its
programs run (gathering inside the tile loop keeps Triton from pipelining the loads of ``x``).
This program does it with one program per (row, block of columns): it reads ``perm`` and
writes the output contiguously and gathers ``x`` from L2.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK = 1024


@triton.jit(do_not_specialize=["stride_xm"])
def _gather_columns_kernel(x_ptr, perm_ptr, out_ptr, K, stride_xm, stride_xk, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < K
    src = tl.load(perm_ptr + cols, mask=mask, other=0)
    values = tl.load(x_ptr + row * stride_xm + src.to(tl.int64) * stride_xk, mask=mask)
    tl.store(out_ptr + row * K + cols, values, mask=mask)


def gather_columns(x: Tensor, perm: Tensor) -> Tensor:
    """``x[:, perm]`` for a 2-D ``x`` (any strides) and an int32 or int64 ``perm`` of ``K``."""
    rows, k = x.shape
    out = torch.empty(rows, k, dtype=x.dtype, device=x.device)
    if rows:
        grid = (rows, triton.cdiv(k, BLOCK))
        _gather_columns_kernel[grid](x, perm, out, k, x.stride(0), x.stride(1), BLOCK=BLOCK)
    return out
