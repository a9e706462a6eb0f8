"""cuda-gptq-gemv's view of a layer's groups, checked on the CPU."""

import pytest
import torch

from ferrule_core.quant_linear import QuantLinear
from ferrule_core.testing.kernels import random_gptq_tensors
from ferrule_cuda_kernels.gemv import CudaGptqGemv, uniform_group_size


@pytest.mark.parametrize(
    ("k", "group_size", "expected"),
    [(256, 128, 128), (160, 128, 128), (160, -1, 160), (64, 128, 64), (256, 32, 32)],
)
def test_sorted_layers_have_uniform_groups(k, group_size, expected):
    tensors = random_gptq_tensors(k, 32, 4, group_size, desc_act=True)
    layer = QuantLinear.from_tensors(tensors, 4, group_size, desc_act=True)
    layer.sort_groups()
    assert uniform_group_size(layer.g_idx, group_size) == expected


def test_groups_of_other_sizes_are_refused():
    g_idx = torch.tensor([0] * 40 + [1] * 24, dtype=torch.int32)  # 64 rows, "group_size" 32
    with pytest.raises(ValueError, match="consecutive rows"):
        uniform_group_size(g_idx, 32)
    unsorted = torch.tensor([1, 0] * 32, dtype=torch.int32)
    with pytest.raises(ValueError, match="consecutive rows"):
        uniform_group_size(unsorted, 32)


def test_the_kernel_refuses_a_cpu_layer():
    layer = QuantLinear.from_tensors(random_gptq_tensors(64, 32, 4, 32), 4, 32)
    with pytest.raises(ValueError, match="runs on CUDA"):
        CudaGptqGemv(layer)
