"""``triton-silu-mul``: a gated MLP's ``silu(gate) * up`` in one launch.

The merged ``gate_up_proj`` writes ``[T, 2 * I]`` rows laid out ``[gate | up]``
(:mod:`ferrule_engine.layers.merge` concatenates gate's output features before up's). Each
program reads one row's ``BLOCK`` gate features and the matching up features, computes
``gate * sigmoid(gate) * up`` in float32 and stores ``[T, I]`` rounded once to the input
dtype (torch ops round after the SiLU and again after the product, and take two launches,
each reading and writing the full intermediate).

The grid is ``(rows, cdiv(I, BLOCK))`` and ``BLOCK`` depends on ``I`` alone, so a launch is
fixed by the tensor shapes and replays in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_BLOCK = 1024


@triton.jit
def _silu_mul_kernel(
    x_ptr,
    out_ptr,
    n_cols,
    stride_x,
    stride_out,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    gate_ptr = x_ptr + row * stride_x + cols
    gate = tl.load(gate_ptr, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_ptr + n_cols, mask=mask, other=0.0).to(tl.float32)
    out = gate * tl.sigmoid(gate) * up
    tl.store(out_ptr + row * stride_out + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


class TritonSiluMul:
    """The kernel object for one gated MLP: ``forward(x[..., 2 * I]) -> [..., I]``."""

    def __init__(self, layer: torch.nn.Module | None = None):
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = x.shape[-1] if x.dim() else 0
        if x.dim() == 0 or width % 2:
            raise ValueError(
                f"triton-silu-mul: x has shape {tuple(x.shape)}; its last dimension must be "
                "2 * intermediate_size, the [gate | up] output of the merged gate_up_proj"
            )
        if x.dtype not in DTYPES:
            raise ValueError(
                f"triton-silu-mul: x is {x.dtype}; use one of "
                f"{', '.join(str(d).removeprefix('torch.') for d in DTYPES)}"
            )
        cols = width // 2
        rows2d = x.reshape(-1, width)
        if rows2d.stride(-1) != 1:
            rows2d = rows2d.contiguous()
        out = torch.empty(rows2d.shape[0], cols, dtype=x.dtype, device=x.device)
        if out.numel():
            block = min(triton.next_power_of_2(cols), MAX_BLOCK)
            grid = (rows2d.shape[0], triton.cdiv(cols, block))
            _silu_mul_kernel[grid](
                rows2d,
                out,
                cols,
                rows2d.stride(0),
                out.stride(0),
                BLOCK=block,
                num_warps=4,
            )
        return out.reshape(*x.shape[:-1], cols)
