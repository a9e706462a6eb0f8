"""GPTQ's inner loop: quantize one block of columns in order, with error feedback.

For each column ``i`` of the block: round it to its grid, and spread its rounding error,
divided by ``U[i, i]``, over the block's later columns through row ``i`` of ``U``. The loop
is ~10 small kernels per column, so on a GPU its cost is launch overhead: there the loop
is captured once per shape as a CUDA graph and replayed for every block of every layer
of that shape (the same kernels, so the same numbers as the eager loop).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


def sweep(
    w1: Tensor, u1: Tensor, scales: Tensor, zeros: Tensor, maxq: int
) -> tuple[Tensor, Tensor]:
    """Quantize the columns of ``w1 [R, n]`` in order.

    ``u1 [n, n]`` is the block's diagonal block of the upper inverse-Hessian factor;
    ``scales`` and ``zeros`` ``[n, R]`` hold each column's grid. Returns the codes (as
    float) and the scaled errors ``(w - q) / U[i, i]``, both ``[R, n]``; ``w1`` is not
    modified.
    """
    rows, n = w1.shape
    if w1.is_cuda:
        return _graph_sweep(rows, n, maxq, w1.device).run(w1, u1, scales, zeros)
    codes, errors = torch.empty_like(w1), torch.empty_like(w1)
    _loop(w1.clone(), u1, scales, zeros, maxq, codes, errors)
    return codes, errors


def _loop(
    w1: Tensor, u1: Tensor, scales: Tensor, zeros: Tensor, maxq: int, codes: Tensor, errors: Tensor
) -> None:
    for i in range(w1.shape[1]):
        w = w1[:, i]
        q = torch.clamp(torch.round(w / scales[i]) + zeros[i], 0, maxq)
        codes[:, i] = q
        err = (w - (q - zeros[i]) * scales[i]) / u1[i, i]
        w1[:, i:].addr_(err, u1[i, i:], alpha=-1)
        errors[:, i] = err


class _GraphSweep:
    """The loop captured as a CUDA graph over fixed buffers of one shape."""

    def __init__(self, rows: int, n: int, maxq: int, device: torch.device):
        def buffer(*shape):
            return torch.zeros(*shape, dtype=torch.float32, device=device)

        self.w1, self.u1 = buffer(rows, n), torch.eye(n, device=device)
        self.scales, self.zeros = torch.ones(n, rows, device=device), buffer(n, rows)
        self.codes, self.errors = buffer(rows, n), buffer(rows, n)
        args = (self.w1, self.u1, self.scales, self.zeros, maxq, self.codes, self.errors)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm up outside the capture, as CUDA graphs require
            _loop(*args)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            _loop(*args)

    def run(self, w1: Tensor, u1: Tensor, scales: Tensor, zeros: Tensor) -> tuple[Tensor, Tensor]:
        self.w1.copy_(w1)
        self.u1.copy_(u1)
        self.scales.copy_(scales)
        self.zeros.copy_(zeros)
        self.graph.replay()
        return self.codes.clone(), self.errors.clone()


@functools.lru_cache(maxsize=16)
def _graph_sweep(rows: int, n: int, maxq: int, device: torch.device) -> _GraphSweep:
    return _GraphSweep(rows, n, maxq, device)
