"""cuda-gptq-mma on a CUDA device: the conformance kit, split-K, the dense path, graphs."""

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
from ferrule_cuda_kernels.mma_pack import unpack

pytestmark = pytest.mark.gpu


class TestCudaGptqMma(KernelConformance):
    kernel = "cuda-gptq-mma"
    device = "cuda"
    dtypes = ("float16", "bfloat16")
    batch_shapes = ((1,), (5,), (2, 9), (40,), (300,))


def make_layer(k, n, group_size, *, desc_act=False, sym=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tensors = random_gptq_tensors(k, n, 4, group_size, desc_act=desc_act, sym=sym, generator=gen)
    layer = QuantLinear.from_tensors(
        tensors, 4, group_size, desc_act=desc_act, sym=sym, kernel="cuda-gptq-mma",
        registry=load_plugins(),
    )  # fmt: skip
    return layer.to("cuda")


# (K, N, group_size, desc_act, sym): 4096 x 1008 ends on a partial block of columns.
LARGE = [
    (4096, 1008, 128, True, False),
    (4096, 512, -1, False, True),
    (1024, 4096, 32, False, False),
    (2048, 768, 64, True, True),
]


@pytest.mark.parametrize(("k", "n", "group_size", "desc_act", "sym"), LARGE)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_large_layers(k, n, group_size, desc_act, sym, dtype):
    layer = make_layer(k, n, group_size, desc_act=desc_act, sym=sym)
    gen = torch.Generator().manual_seed(1)
    for rows in (1, 3, 8, 16, 20, 64, 100, 129, 700):
        x = torch.randn(rows, k, generator=gen).to(dtype).cuda()
        with torch.no_grad():
            first, second = layer(x), layer(x)
        assert layer.kernel_spec.name == "cuda-gptq-mma"
        err = relative_error(first, float64_reference(layer, x))
        name = str(dtype).removeprefix("torch.")
        assert err < TOLERANCE[name], f"{rows} rows: relative error {err:.2e}"
        assert torch.equal(first, second), "a second call must not see the first's counters"
    kernel = layer._kernel
    plan = kernel.module.gptq_mma_plan(1, k, n, kernel.counters.numel(), 0, 0)
    assert plan[0] == 1 and plan[2] > 1, f"expected a split-K plan at one row, got {plan}"


@pytest.mark.parametrize(("n_tiles", "splits"), [(2, 1), (4, 3), (2, 7)])
def test_forced_plans_agree(n_tiles, splits):
    layer = make_layer(1024, 512, 128, sym=False)
    x = torch.randn(4, 1024, dtype=torch.float16, device="cuda")
    with torch.no_grad():
        layer(x)  # builds the kernel
    kernel = layer._kernel
    kernel.n_tiles, kernel.splits = n_tiles, splits
    with torch.no_grad():
        out = layer(x)
    assert relative_error(out, float64_reference(layer, x)) < TOLERANCE["float16"]


def test_packed_copy_holds_the_layers_codes():
    from ferrule_core.format import unpack_rows

    layer = make_layer(512, 256, 128, desc_act=True)
    with torch.no_grad():
        layer(torch.randn(1, 512, dtype=torch.float16, device="cuda"))
    kernel = layer._kernel
    assert torch.equal(unpack(kernel.packed).cpu(), unpack_rows(layer.qweight, 4).cpu())


def test_dense_weight_matches_the_layer():
    layer = make_layer(1024, 256, 64, sym=False)
    with torch.no_grad():
        layer(torch.randn(1, 1024, dtype=torch.float16, device="cuda"))
    kernel = layer._kernel
    dense = kernel.dense_weight(torch.float16).double()  # [N, K], sorted rows
    from ferrule_core.kernels.weight_only_grad import stored_weight

    expected = stored_weight(layer).t().double().cpu()
    assert relative_error(dense, expected) < 1e-3


def test_cuda_graph_replay():
    layer = make_layer(2048, 1024, 128, desc_act=True)
    for rows in (1, 24, 200):
        static = torch.randn(rows, 2048, dtype=torch.float16, device="cuda")
        with torch.no_grad():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                layer(static)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = layer(static)
        for seed in range(2):
            gen = torch.Generator().manual_seed(seed)
            static.copy_(torch.randn(rows, 2048, generator=gen))
            graph.replay()
            torch.cuda.synchronize()
            err = relative_error(out, float64_reference(layer, static))
            assert err < TOLERANCE["float16"], f"{rows} rows: {err:.2e}"


def test_gradients_reach_the_input():
    layer = make_layer(512, 256, 128, desc_act=True)
    x = torch.randn(3, 512, dtype=torch.float32).cuda().half().requires_grad_()
    layer(x).float().sum().backward()
    weight = layer.dequantize_weight(torch.float64)  # [N, K], original row order
    expected = torch.ones(3, 256, dtype=torch.float64, device="cuda") @ weight
    assert relative_error(x.grad, expected.cpu()) < 2e-3
