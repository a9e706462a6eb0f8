"""cuda-gptq-gemv on a CUDA device: the conformance kit, split-K, graphs, gradients.

The kit's layers are small (one output tile, K split once); the larger layers below make the
kernel split K over many blocks, end on a partial column tile and a partial unit of rows, and
run it twice to show the split-K counters are left at zero.
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


class TestCudaGptqGemv(KernelConformance):
    kernel = "cuda-gptq-gemv"
    device = "cuda"
    dtypes = ("float16", "bfloat16")
    batch_shapes = ((1,), (3,), (8,), (2, 4), (33,))


# (K, N, bits, group_size, desc_act, sym): 4096 x 1000 ends on a partial column tile;
# K = 4104 per-channel ends on a partial unit of 32 rows.
LARGE = [
    (4096, 1000, 4, 128, True, False),
    (4104, 512, 4, -1, False, True),
    (2048, 768, 8, 128, True, True),
    (1024, 4096, 4, 32, False, False),
]


@pytest.mark.parametrize(("k", "n", "bits", "group_size", "desc_act", "sym"), LARGE)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_large_layers_split_k(kernel_layer, k, n, bits, group_size, desc_act, sym, dtype):
    layer = kernel_layer("cuda-gptq-gemv", k, n, group_size, bits=bits, desc_act=desc_act, sym=sym)
    gen = torch.Generator().manual_seed(1)
    for rows in (1, 3, 8, 20):
        x = torch.randn(rows, k, generator=gen).to(dtype).cuda()
        with torch.no_grad():
            first, second = layer(x), layer(x)
        assert layer.kernel_spec.name == "cuda-gptq-gemv"
        expected = float64_reference(layer, x)
        name = str(dtype).removeprefix("torch.")
        err = relative_error(first, expected)
        assert err < TOLERANCE[name], f"{rows} rows: relative error {err:.2e}"
        assert torch.equal(first, second), "a second call must not see the first's counters"
    plan = layer._kernel.module.gptq_gemv_plan(1, k, n, bits, layer._kernel.counters.numel())
    assert plan[0] == 1 and plan[1] > 1, f"expected a split-K plan at one row, got {plan}"


def test_activations_of_large_magnitude(kernel_layer):
    """Products are formed at 2^-64 scale; large inputs must not overflow or lose precision."""
    layer = kernel_layer("cuda-gptq-gemv", 1024, 256, 128, bits=4, sym=False)
    for scale in (1e-4, 1.0, 3e4):
        x = (torch.randn(2, 1024) * scale).to(torch.bfloat16).cuda()
        with torch.no_grad():
            err = relative_error(layer(x), float64_reference(layer, x))
        assert err < TOLERANCE["bfloat16"], f"x scale {scale}: relative error {err:.2e}"


@pytest.mark.parametrize("rows", [1, 2])
def test_float16_sums_neither_overflow_nor_lose_small_inputs(kernel_layer, rows):
    """The half2 path forms float16 sums at a scale chosen from the largest |x| of each chunk."""
    layer = kernel_layer("cuda-gptq-gemv", 4096, 512, 128, bits=4, sym=False)
    gen = torch.Generator().manual_seed(2)
    for scale in (1e-3, 1.0, 1e4):
        x = torch.randn(rows, 4096, generator=gen) * scale
        x[:, 11] = 60000.0 if scale == 1e4 else x[:, 11]  # an outlier near float16's limit
        x = x.clamp(-65000, 65000).half().cuda()
        with torch.no_grad():
            err = relative_error(layer(x), float64_reference(layer, x))
        assert err < TOLERANCE["float16"], f"x scale {scale}: relative error {err:.2e}"


def test_cuda_graph_replay(kernel_layer, graph_replay_errors):
    layer = kernel_layer("cuda-gptq-gemv", 2048, 1024, 128, bits=4, desc_act=True)
    errors = graph_replay_errors(layer, 1)
    assert max(errors) < TOLERANCE["float16"], errors


def test_gradients_reach_the_input(kernel_layer):
    layer = kernel_layer("cuda-gptq-gemv", 512, 256, 128, bits=4, desc_act=True)
    x = torch.randn(3, 512, dtype=torch.float32).cuda().half().requires_grad_()
    layer(x).float().sum().backward()
    weight = layer.dequantize_weight(torch.float64)  # [N, K], original row order
    expected = torch.ones(3, 256, dtype=torch.float64, device="cuda") @ weight
    assert relative_error(x.grad, expected.cpu()) < 2e-3


def test_preferred_for_decode_rows_only():
    registry = load_plugins()
    tensors = random_gptq_tensors(512, 256, 4, 128)
    layer = QuantLinear.from_tensors(tensors, 4, 128, registry=registry).to("cuda")
    with torch.no_grad():
        layer(torch.randn(1, 512, dtype=torch.float16, device="cuda"))
    plan = {spec.name: (low, high) for low, high, spec, _ in layer._plan}
    assert plan.get("cuda-gptq-gemv") == (1, 2), plan
