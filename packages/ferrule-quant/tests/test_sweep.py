"""The inner column loop: eager on the CPU, a replayed CUDA graph on GPUs, same numbers."""

from __future__ import annotations

import pytest
import torch

from ferrule_quant.sweep import _loop, sweep


def _inputs(rows=96, n=32, device="cpu"):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(256, n, generator=gen)
    h = x.t() @ x / 256 + 0.1 * torch.eye(n)
    u1 = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    w1 = torch.randn(rows, n, generator=gen)
    scales = torch.rand(n, rows, generator=gen) * 0.1 + 0.05
    zeros = torch.full((n, rows), 8.0)
    return [t.to(device) for t in (w1, u1, scales, zeros)]


def test_sweep_feeds_each_error_forward_and_leaves_the_input_alone():
    w1, u1, scales, zeros = _inputs()
    before = w1.clone()
    codes, errors = sweep(w1, u1, scales, zeros, 15)
    assert torch.equal(w1, before)
    # column 0 is rounded as it is; its error reaches column 1 through u1[0, 1]
    q0 = torch.clamp(torch.round(w1[:, 0] / scales[0]) + zeros[0], 0, 15)
    assert torch.equal(codes[:, 0], q0)
    e0 = (w1[:, 0] - (q0 - zeros[0]) * scales[0]) / u1[0, 0]
    assert torch.allclose(errors[:, 0], e0)
    w_1 = w1[:, 1] - e0 * u1[0, 1]
    assert torch.equal(codes[:, 1], torch.clamp(torch.round(w_1 / scales[1]) + zeros[1], 0, 15))


@pytest.mark.gpu
def test_the_cuda_graph_matches_the_eager_loop_exactly():
    w1, u1, scales, zeros = _inputs(device="cuda")
    for _ in range(2):  # the second call replays the cached graph with new data
        codes, errors = sweep(w1, u1, scales, zeros, 15)
        want_codes, want_errors = torch.empty_like(w1), torch.empty_like(w1)
        _loop(w1.clone(), u1, scales, zeros, 15, want_codes, want_errors)
        assert torch.equal(codes, want_codes) and torch.equal(errors, want_errors)
        w1 = w1 * 1.5
