"""cuda-gptq-mma on a CUDA device (sm_80+): the conformance kit, its plans, graphs, selection.

The kit's layers are small; the larger ones below run every row tile (8, 16, 32, 64 rows and
passes of 64), every forced split of the block's warps between columns and K, split-K over
blocks, a partial column strip and a partial unit of rows, each twice to show the split-K
counters are left at zero.
"""

import pytest
import torch

from ferrule_core import load_plugins
from ferrule_core.quant_linear import QuantLinear
from ferrule_core.testing import KernelConformance
from ferrule_core.testing.kernels import (
    TOLERANCE,
    random_gptq_tensors,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
        reason="needs an sm_80+ GPU",
    ),
]


class TestCudaGptqMma(KernelConformance):
    kernel = "cuda-gptq-mma"
    device = "cuda"
    dtypes = ("float16",)
    batch_shapes = ((3,), (16,), (2, 4), (33,), (70,))


# (K, N, group_size, desc_act, sym): 4096 x 1000 ends on a partial column strip; K = 4104
# per-channel on a partial unit of 32 rows.
LARGE = [
    (4096, 1000, 128, True, False),
    (4104, 512, -1, False, True),
    (1024, 4096, 32, False, False),
    (8192, 2048, 128, False, False),
]


@pytest.mark.parametrize(("k", "n", "group_size", "desc_act", "sym"), LARGE)
def test_large_layers(kernel_layer, forced_plans, k, n, group_size, desc_act, sym):
    layer = kernel_layer("cuda-gptq-mma", k, n, group_size, desc_act=desc_act, sym=sym)
    plans = ((0, 0), (1, 1), (2, 3), (8, 2))
    forced_plans(layer, (3, 16, 24, 64, 130), plans, ("warps_k", "splits"))
    assert layer.kernel_spec.name == "cuda-gptq-mma"


def test_cuda_graph_replay(kernel_layer, graph_replay_errors):
    layer = kernel_layer("cuda-gptq-mma", 2048, 1024, 128, desc_act=True)
    errors = graph_replay_errors(layer, 16)
    assert max(errors) < TOLERANCE["float16"], errors


def test_preferred_for_small_batches():
    """3-8 rows before Hopper; on sm_90 cuda-gptq-wgmma serves them (from 3 rows)."""
    registry = load_plugins()
    tensors = random_gptq_tensors(512, 256, 4, 128)
    layer = QuantLinear.from_tensors(tensors, 4, 128, registry=registry).to("cuda")
    with torch.no_grad():
        layer(torch.randn(16, 512, dtype=torch.float16, device="cuda"))
    plan = {spec.name: (low, high) for low, high, spec, _ in layer._plan}
    hopper = torch.cuda.get_device_capability() == (9, 0)
    assert plan.get("cuda-gptq-mma") == (None if hopper else (3, 8)), plan
