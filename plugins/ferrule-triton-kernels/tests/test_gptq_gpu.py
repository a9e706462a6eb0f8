"""``triton-gptq`` compiled on a CUDA GPU: the conformance kit in float16 and bfloat16 with
batches on both programs (M = 1 reduction, split-K with ``tl.dot``, tiled GEMM), act-order on
a model-sized layer, the boundary where the small-batch program hands over to the GEMM,
split-K over a long K, and replay inside a CUDA graph.
"""

from __future__ import annotations

import pytest
import torch

from ferrule_core.quant_linear import QuantLinear
from ferrule_core.testing import (
    KernelConformance,
    float64_reference,
    random_gptq_tensors,
    relative_error,
)

pytestmark = pytest.mark.gpu

TOLERANCE = {torch.float16: 3e-3, torch.bfloat16: 2e-2}
DTYPES = [torch.float16, torch.bfloat16]


class TestTritonGptqCuda(KernelConformance):
    kernel = "triton-gptq"
    device = "cuda"
    dtypes = ("float16", "bfloat16")
    # One row count per program (M = 1 reduction, split-K with tl.dot, tiled GEMM): every
    # other row count compiles the same programs again under other tile constants, which on
    # a fresh machine cost minutes; the M = 64 / 65 hand-over has its own test below.
    batch_shapes = ((1,), (5,), (300,))


def _layer(in_features, out_features, bits, group_size, *, seed=0, **kw):
    gen = torch.Generator().manual_seed(seed)
    tensors = random_gptq_tensors(in_features, out_features, bits, group_size, generator=gen, **kw)
    layer = QuantLinear.from_tensors(
        tensors,
        bits,
        group_size,
        desc_act=kw.get("desc_act", False),
        sym=kw.get("sym", True),
        kernel="triton-gptq",
    )
    return layer.to("cuda")


def _x(rows, in_features, dtype, seed=1):
    x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(seed))
    return x.to(dtype).to("cuda")


def _kernel(layer, table=None):
    from ferrule_triton_kernels.linear import TritonGptqLinear

    return TritonGptqLinear(layer, table)


@pytest.mark.parametrize("dtype", DTYPES)
def test_act_order_on_a_model_sized_layer(dtype):
    layer = _layer(4096, 512, 4, 128, desc_act=True, sym=False)
    for rows in (1, 9, 16, 64, 300):
        x = _x(rows, 4096, dtype)
        with torch.no_grad():
            out = layer(x)
        assert layer.kernel_spec.name == "triton-gptq" and layer.input_perm is not None
        assert relative_error(out, float64_reference(layer, x)) < TOLERANCE[dtype]
    kernel = _kernel(layer)  # the rows are sorted now: groups follow the row, x is gathered
    assert kernel.operands.perm is not None and kernel.operands.g_idx is None
    assert kernel.operands.group_mode(kernel.config(16).block_k) == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_small_batch_program_hands_over_to_the_gemm(dtype):
    from ferrule_triton_kernels.configs import CONFIGS

    last = max(key for key, config in CONFIGS.items() if config.program == "gemv")
    layer = _layer(2048, 768, 4, 128, sym=False)
    kernel = _kernel(layer)
    assert kernel.config(last).program == "gemv" and kernel.config(last + 1).program == "gemm"
    for rows in (last - 1, last, last + 1):
        x = _x(rows, 2048, dtype)
        assert relative_error(kernel.forward(x), float64_reference(layer, x)) < TOLERANCE[dtype]
    # Both programs agree on the same rows.
    gemm_only = _kernel(layer, {1: kernel.config(last + 1)})
    x = _x(last, 2048, dtype)
    assert gemm_only.config(last).program == "gemm"
    assert relative_error(gemm_only.forward(x), kernel.forward(x).double().cpu()) < 1e-2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 16])
def test_split_k_over_a_long_k(dtype, rows):
    layer = _layer(8192, 256, 4, 128)
    kernel = _kernel(layer)
    assert kernel.config(rows).split_k > 1
    x = _x(rows, 8192, dtype)
    assert relative_error(kernel.forward(x), float64_reference(layer, x)) < TOLERANCE[dtype]


@pytest.mark.parametrize("rows", [1, 16, 300])
def test_replays_in_a_cuda_graph(rows):
    layer = _layer(4096, 1024, 4, 128, desc_act=True, sym=False)
    layer.sort_groups()
    kernel = _kernel(layer)
    static_x = _x(rows, 4096, torch.float16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # compile outside the capture
            kernel.forward(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = kernel.forward(static_x)
    fresh = _x(rows, 4096, torch.float16, seed=7)
    static_x.copy_(fresh)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(static_out, kernel.forward(fresh), rtol=0, atol=0)
