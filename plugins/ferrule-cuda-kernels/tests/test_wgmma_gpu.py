"""cuda-gptq-wgmma on an sm_90 device: the conformance kit, its plans, graphs, selection.

The kit's layers are small; the larger ones below run every row tile (16, 32, 64, 128 rows and
several tiles of 128), forced tiles and splits, split-K over blocks, a partial block of
columns, act-order and one group, each twice to show the split-K counters are left at zero.
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

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
        reason="needs an sm_90 GPU",
    ),
]


class TestCudaGptqWgmma(KernelConformance):
    kernel = "cuda-gptq-wgmma"
    device = "cuda"
    dtypes = ("float16",)
    batch_shapes = ((3,), (16,), (2, 12), (33,), (130,))


def make_layer(k, n, group_size, *, desc_act=False, sym=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tensors = random_gptq_tensors(k, n, 4, group_size, desc_act=desc_act, sym=sym, generator=gen)
    layer = QuantLinear.from_tensors(
        tensors, 4, group_size, desc_act=desc_act, sym=sym, kernel="cuda-gptq-wgmma",
        registry=load_plugins(),
    )  # fmt: skip
    return layer.to("cuda")


# (K, N, group_size, desc_act, sym): N = 1000 ends on a partial block of 256 columns.
LARGE = [
    (4096, 1000, 128, True, False),
    (4096, 512, -1, False, True),
    (1024, 4096, 64, False, False),
    (8192, 2048, 128, False, False),
]


@pytest.mark.parametrize(("k", "n", "group_size", "desc_act", "sym"), LARGE)
def test_large_layers(k, n, group_size, desc_act, sym):
    layer = make_layer(k, n, group_size, desc_act=desc_act, sym=sym)
    gen = torch.Generator().manual_seed(1)
    for rows in (9, 16, 40, 64, 128, 300):
        x = torch.randn(rows, k, generator=gen).half().cuda()
        expected = float64_reference(layer, x)
        for tokens, splits in ((0, 0), (16, 1), (64, 3), (128, 2)):
            with torch.no_grad():
                layer(x)  # builds the kernel object on first use
            layer._kernel.tokens, layer._kernel.splits = tokens, splits
            with torch.no_grad():
                first, second = layer(x), layer(x)
            err = relative_error(first, expected)
            assert err < TOLERANCE["float16"], f"{rows} rows, {tokens, splits}: error {err:.2e}"
            assert torch.equal(first, second), "a second call must not see the first's counters"
    assert layer.kernel_spec.name == "cuda-gptq-wgmma"


def test_cuda_graph_replay(graph_replay_errors):
    layer = make_layer(2048, 1024, 128, desc_act=True)
    errors = graph_replay_errors(layer, 64)
    assert max(errors) < TOLERANCE["float16"], errors


def test_below_triton_gptq_in_selection():
    """Experimental: triton-gptq (faster on an H100) serves 9 rows and up where installed."""
    registry = load_plugins()
    tensors = random_gptq_tensors(512, 256, 4, 128)
    layer = QuantLinear.from_tensors(tensors, 4, 128, registry=registry).to("cuda")
    with torch.no_grad():
        layer(torch.randn(16, 512, dtype=torch.float16, device="cuda"))
    plan = {spec.name: (low, high) for low, high, spec, _ in layer._plan}
    assert "cuda-gptq-wgmma" not in plan, plan
    assert plan.get("triton-gptq") == (9, None), plan
