"""``triton-silu-mul`` on a CUDA device at Llama-3-8B's MLP width, in float16 and bfloat16.

The oracle is ``F.silu(gate) * up`` in float64 on the GPU. Rows come from a wider buffer
(strided, as a slice of a padded activation would be) at decode and prefill batch sizes;
the last test captures the kernel in a CUDA graph and replays it on new inputs.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ferrule_core import KernelRequest, load_plugins
from ferrule_triton_kernels.fused_act import TritonSiluMul

pytestmark = pytest.mark.gpu
DEVICE = "cuda"
INTER = 14336  # Llama-3-8B's intermediate_size
# Rounded once to the dtype: at most about one unit in the last place.
TOLERANCE = {torch.float16: 1e-3, torch.bfloat16: 8e-3}
DTYPES = list(TOLERANCE)
DTYPE_IDS = ["float16", "bfloat16"]


def _max_relative(out: torch.Tensor, x: torch.Tensor) -> float:
    gate, up = x.double().chunk(2, dim=-1)
    expected = F.silu(gate) * up
    return ((out.double() - expected).abs() / expected.abs().clamp_min(1e-3)).max().item()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rows", [1, 7, 512, 2048])
def test_llama_width_matches_float64(dtype, rows):
    gen = torch.Generator(device=DEVICE).manual_seed(rows)
    wide = torch.randn(rows, 2 * INTER + 64, generator=gen, device=DEVICE).mul_(3).to(dtype)
    x = wide[:, 32 : 32 + 2 * INTER]
    out = TritonSiluMul().forward(x)
    assert out.shape == (rows, INTER) and out.dtype == dtype and out.is_contiguous()
    assert _max_relative(out, x) < TOLERANCE[dtype]
    gate, up = x.chunk(2, dim=-1)
    torch_ops = F.silu(gate) * up  # rounds twice: the kernel is at least as close
    assert _max_relative(out, x) <= _max_relative(torch_ops, x) + TOLERANCE[dtype] / 4


def test_selected_for_cuda_requests():
    capability = torch.cuda.get_device_capability()
    request = KernelRequest(
        platform="cuda", dtype="bfloat16", capability=capability, activation="silu"
    )
    spec = load_plugins().select_kernel("activation", request)
    assert spec.name == "triton-silu-mul"


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_replays_in_a_cuda_graph(dtype):
    kernel = TritonSiluMul()
    static = torch.empty(256, 2 * INTER, dtype=dtype, device=DEVICE)
    gen = torch.Generator(device=DEVICE).manual_seed(3)
    static.copy_(torch.randn(static.shape, generator=gen, device=DEVICE))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        kernel.forward(static)  # compile and warm up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernel.forward(static)
    for round_ in range(3):
        static.copy_(torch.randn(static.shape, generator=gen, device=DEVICE) * (round_ + 1))
        out.fill_(math.nan)
        graph.replay()
        torch.cuda.synchronize()
        assert _max_relative(out, static) < TOLERANCE[dtype], f"round {round_}"
