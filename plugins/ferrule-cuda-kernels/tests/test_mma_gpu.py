"""cuda-gptq-mma on a CUDA device: the conformance kit, every row tile, split-K, graphs.

The larger layers make the kernel split K over many blocks, stage x in several chunks, end on
partial column and row tiles, and gather x through act-order's permutation; each runs twice
to show the split-K counters are left at zero.
"""

import pytest
import torch

from ferrule_core import load_plugins
from ferrule_core.quant_linear import QuantLinear
from ferrule_core.testing import KernelConformance
from ferrule_core.testing.kernels import (
    TOLERANCE,
    float64_reference,
    random_gptq_tensors,
    relative_error,
)

pytestmark = pytest.mark.gpu


class TestCudaGptqMma(KernelConformance):
    kernel = "cuda-gptq-mma"
    device = "cuda"
    dtypes = ("float16",)
    batch_shapes = ((3,), (16,), (2, 9), (33,), (64,), (70,))


def make_layer(k, n, group_size, *, desc_act=False, sym=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tensors = random_gptq_tensors(k, n, 4, group_size, desc_act=desc_act, sym=sym, generator=gen)
    layer = QuantLinear.from_tensors(
        tensors,
        4,
        group_size,
        desc_act=desc_act,
        sym=sym,
        kernel="cuda-gptq-mma",
        registry=load_plugins(),
    )
    return layer.to("cuda")


# (K, N, group_size, desc_act, sym): 4096 x 1000 ends on a partial column tile; K = 4104
# per-channel ends on a partial unit of 32 rows; K = 8192 stages x in several chunks.
LARGE = [
    (4096, 1000, 128, True, False),
    (4104, 512, -1, False, True),
    (8192, 4096, 128, False, False),
    (1024, 4096, 32, True, True),
]


@pytest.mark.parametrize(("k", "n", "group_size", "desc_act", "sym"), LARGE)
def test_large_layers(k, n, group_size, desc_act, sym):
    layer = make_layer(k, n, group_size, desc_act=desc_act, sym=sym)
    gen = torch.Generator().manual_seed(1)
    for rows in (3, 16, 17, 32, 40, 64, 130):
        x = torch.randn(rows, k, generator=gen).half().cuda()
        with torch.no_grad():
            first, second = layer(x), layer(x)
        assert layer.kernel_spec.name == "cuda-gptq-mma"
        err = relative_error(first, float64_reference(layer, x))
        assert err < TOLERANCE["float16"], f"{rows} rows: relative error {err:.2e}"
        assert torch.equal(first, second), "a second call must not see the first's counters"
    plan = layer._kernel.module.gptq_gemv_plan(16, k, n, 4, 10**6, tensor_cores=True)
    assert plan[0] == 16, plan


def test_split_k_is_planned_for_narrow_layers():
    layer = make_layer(4096, 512, 128)
    with torch.no_grad():
        layer(torch.randn(16, 4096, dtype=torch.float16, device="cuda"))  # builds the kernel
    plan = layer._kernel.module.gptq_gemv_plan(16, 4096, 512, 4, 10**6, tensor_cores=True)
    assert plan[1] > 1, f"expected a split-K plan, got {plan}"


def test_refuses_bfloat16():
    layer = make_layer(512, 256, 128)
    with torch.no_grad():
        layer(torch.randn(4, 512, dtype=torch.float16, device="cuda"))  # builds the kernel
    with pytest.raises(TypeError, match="float16"):
        layer._kernel.matmul(torch.randn(4, 512, dtype=torch.bfloat16, device="cuda"))


def test_cuda_graph_replay():
    layer = make_layer(2048, 1024, 128, desc_act=True)
    static = torch.randn(16, 2048, dtype=torch.float16, device="cuda")
    with torch.no_grad():
        layer(static)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            layer(static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = layer(static)
        for seed in range(3):
            static.copy_(torch.randn(16, 2048, generator=torch.Generator().manual_seed(seed)))
            graph.replay()
            torch.cuda.synchronize()
            assert relative_error(out, float64_reference(layer, static)) < TOLERANCE["float16"]


def test_preferred_for_3_to_64_rows():
    registry = load_plugins()
    tensors = random_gptq_tensors(512, 256, 4, 128)
    layer = QuantLinear.from_tensors(tensors, 4, 128, registry=registry).to("cuda")
    with torch.no_grad():
        layer(torch.randn(16, 512, dtype=torch.float16, device="cuda"))
    plan = {spec.name: (low, high) for low, high, spec, _ in layer._plan}
    assert plan.get("cuda-gptq-mma") == (3, 64), plan
