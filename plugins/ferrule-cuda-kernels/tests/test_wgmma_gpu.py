"""cuda-gptq-wgmma on an sm_90 device: the conformance kit, its plans, graphs, selection.

The kit's layers are small; the larger ones below run every row tile (16, 32, 64, 128 rows and
several tiles of 128), forced tiles (one or two m64 tiles a consumer) and splits, split-K over blocks, a partial block of
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


# (K, N, group_size, desc_act, sym): N = 992 ends on a partial block of 256 columns.
LARGE = [
    (4096, 992, 128, True, False),
    (4096, 512, -1, False, True),
    (1024, 4096, 64, False, False),
    (8192, 2048, 128, False, False),
]


@pytest.mark.parametrize(("k", "n", "group_size", "desc_act", "sym"), LARGE)
def test_large_layers(kernel_layer, forced_plans, k, n, group_size, desc_act, sym):
    layer = kernel_layer("cuda-gptq-wgmma", k, n, group_size, desc_act=desc_act, sym=sym)
    # (tokens, tiles a consumer, splits): 0 lets the plan choose
    plans = ((0, 0, 0), (16, 2, 1), (64, 2, 3), (64, 1, 2), (128, 2, 2), (128, 1, 3))
    forced_plans(layer, (9, 16, 40, 64, 128, 300), plans, ("tokens", "tiles", "splits"))
    assert layer.kernel_spec.name == "cuda-gptq-wgmma"


@pytest.mark.parametrize("desc_act", [False, True])
def test_views_of_wider_inputs(kernel_layer, desc_act):
    """x read in place (rows further apart than K) and copied first (misaligned, strided)."""
    layer = kernel_layer("cuda-gptq-wgmma", 1024, 512, 128, desc_act=desc_act)
    wide = torch.randn(40, 2048, dtype=torch.float16, device="cuda")
    for x in (wide[:, :1024], wide[:, 3:1027], wide[:, ::2]):
        with torch.no_grad():
            err = relative_error(layer(x), float64_reference(layer, x))
        assert err < TOLERANCE["float16"], (x.stride(), x.storage_offset(), err)


@pytest.mark.parametrize("gather_in_kernel", [True, False])
def test_gather_in_kernel(kernel_layer, forced_plans, graph_replay_errors, gather_in_kernel):
    """Act-order rows up to 4 gathered by the kernel's producer warps (the default) or by a
    gather kernel first, forced plans and a graph replay; 5 rows gather first either way."""
    layer = kernel_layer("cuda-gptq-wgmma", 4096, 992, 128, desc_act=True)
    with torch.no_grad():
        layer(torch.randn(4, 4096, dtype=torch.float16, device="cuda"))
    assert layer._kernel.gather_in_kernel  # the default
    layer._kernel.gather_in_kernel = gather_in_kernel
    forced_plans(layer, (1, 3, 4, 5), ((0, 0), (16, 1), (32, 3)), ("tokens", "splits"))
    errors = graph_replay_errors(layer, 4)
    assert max(errors) < TOLERANCE["float16"], errors


# (tokens, tiles a consumer, splits) forced in test_split_k_in_clusters
FORCED_IN_CLUSTERS = (
    (0, 0, 0),
    (16, 2, 2),
    (32, 2, 3),
    (64, 2, 8),
    (64, 1, 4),
    (128, 2, 4),
    (128, 1, 2),
    (256, 1, 2),
)


@pytest.mark.parametrize(("k", "n"), [(4096, 992), (8192, 2048)])
def test_split_k_in_clusters(kernel_layer, graph_replay_errors, k, n):
    """Split-K in thread block clusters wherever it can (clusters=2): each block adds up its
    share of the tile from what the cluster's others store into its shared memory; 2 to 8
    splits, every tile size, rows past M, a graph replay; no counter is touched. Deterministic:
    a second call gives the same bits."""
    layer = kernel_layer("cuda-gptq-wgmma", k, n, 128)
    gen = torch.Generator().manual_seed(2)
    for rows in (9, 40, 64, 128, 300):
        x = torch.randn(rows, k, generator=gen).half().cuda()
        expected = float64_reference(layer, x)
        with torch.no_grad():
            layer(x)  # builds the kernel object
        kernel = layer._kernel
        kernel.clusters = 2
        for forced in FORCED_IN_CLUSTERS:
            kernel.tokens, kernel.tiles, kernel.splits = forced
            plan = kernel.module.gptq_wgmma_plan(rows, k, n, kernel.counters.numel(), *forced, 2)
            assert plan[3] == (1 < plan[1] <= 8), plan  # up to 8 splits fit a cluster here
            with torch.no_grad():
                first, second = layer(x), layer(x)
            assert not kernel.counters.any(), (rows, forced)
            assert torch.equal(first, second)
            err = relative_error(first, expected)
            assert err < TOLERANCE["float16"], (rows, forced, err)
        kernel.tokens = kernel.tiles = kernel.splits = 0
    errors = graph_replay_errors(layer, 256)
    assert max(errors) < TOLERANCE["float16"], errors


def test_cuda_graph_replay(kernel_layer, graph_replay_errors):
    layer = kernel_layer("cuda-gptq-wgmma", 2048, 1024, 128, desc_act=True)
    errors = graph_replay_errors(layer, 64)
    assert max(errors) < TOLERANCE["float16"], errors


@pytest.mark.parametrize("n", [256, 8192])
def test_selection_from_three_rows(n):
    """cuda-gptq-wgmma serves every layer from 3 rows (triton-gptq, where installed, serves no
    row count on an H100)."""
    registry = load_plugins()
    tensors = random_gptq_tensors(512, n, 4, 128)
    layer = QuantLinear.from_tensors(tensors, 4, 128, registry=registry).to("cuda")
    with torch.no_grad():
        out = layer(x := torch.randn(16, 512, dtype=torch.float16, device="cuda"))
    assert relative_error(out, float64_reference(layer, x)) < TOLERANCE["float16"]
    plan = {spec.name: (low, high) for low, high, spec, _ in layer._plan}
    assert plan.get("cuda-gptq-wgmma") == (3, None), plan
    assert "triton-gptq" not in plan, plan
