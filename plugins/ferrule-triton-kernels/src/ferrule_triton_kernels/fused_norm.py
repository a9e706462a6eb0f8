"""``triton-rmsnorm``: RMSNorm, optionally after the residual add, in one launch.

One program per row (token): it loads the row (and the residual row), adds them rounded to
the activation dtype, as ``x + residual`` in torch is, stores the sum as the new residual,
and writes ``weight * (sum * rsqrt(mean(sum**2) + eps))`` with the mean in float32 and the
normalised value rounded to the activation dtype before the weight multiplies it, as
transformers' ``LlamaRMSNorm`` does. In torch ops this is about seven launches.

A layer with an ``output_order`` (set when a model folds the next act-order layer's
permutation into the norm) has its normalised row permuted in the program (``tl.gather``
through shared memory) before the store, which stays contiguous: the permuted output costs
no launch of its own. (Storing through the inverse permutation instead, 2-byte scattered
stores, left an act-order Llama-3-8B 4-8% slower than an in-order one in offline throughput
on an H100; with the gather, within 2.5% either way.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    order_ptr,
    out_ptr,
    res_out_ptr,
    n_cols,
    stride_x,
    stride_res,
    stride_out,
    stride_res_out,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    ORDERED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        res = tl.load(res_ptr + row * stride_res + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + res.to(tl.float32)).to(x.dtype)
        tl.store(res_out_ptr + row * stride_res_out + cols, x, mask=mask)
    xf = x.to(tl.float32)
    mean_square = tl.sum(xf * xf, axis=0) / n_cols
    normed = (xf * tl.rsqrt(mean_square + eps)).to(x.dtype)
    weight = tl.load(w_ptr + cols, mask=mask, other=0.0)
    out = weight.to(tl.float32) * normed.to(tl.float32)
    if ORDERED:
        out = tl.gather(out, tl.load(order_ptr + cols, mask=mask, other=0), 0)
    tl.store(out_ptr + row * stride_out + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


class TritonRMSNorm:
    """The kernel object for one ``RMSNorm`` layer (``weight``, ``eps``, optional
    ``output_order``)."""

    handles_output_order = True

    def __init__(self, layer: torch.nn.Module):
        self.layer = layer

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        weight = self.layer.weight
        cols = x.shape[-1]
        rows2d = x.reshape(-1, cols)
        if rows2d.stride(-1) != 1:
            rows2d = rows2d.contiguous()
        out_dtype = torch.promote_types(weight.dtype, x.dtype)
        out = torch.empty(rows2d.shape, dtype=out_dtype, device=x.device)
        if residual is not None:
            res2d = residual.reshape(-1, cols)
            if res2d.stride(-1) != 1:
                res2d = res2d.contiguous()
            res_out = torch.empty_like(rows2d)
        else:
            res2d = res_out = rows2d  # unused: HAS_RESIDUAL is False
        order = getattr(self.layer, "output_order", None)
        block = triton.next_power_of_2(cols)
        warps = min(max(block // 512, 1), 16)
        if rows2d.shape[0]:
            _rms_norm_kernel[(rows2d.shape[0],)](
                rows2d,
                res2d,
                weight,
                weight if order is None else order,
                out,
                res_out,
                cols,
                rows2d.stride(0),
                res2d.stride(0),
                out.stride(0),
                res_out.stride(0),
                float(self.layer.eps),
                HAS_RESIDUAL=residual is not None,
                ORDERED=order is not None,
                BLOCK=block,
                num_warps=warps,
            )
        out = out.reshape(x.shape)
        if residual is None:
            return out
        return out, res_out.reshape(x.shape)
