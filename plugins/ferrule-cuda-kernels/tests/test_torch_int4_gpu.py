"""torch-int4 on a CUDA device: the conformance kit and a decode-sized layer."""

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


class TestTorchInt4(KernelConformance):
    kernel = "torch-int4"
    device = "cuda"
    dtypes = ("bfloat16",)
    batch_shapes = ((1,), (3,), (16,), (2, 5), (33,))


@pytest.mark.parametrize(("group_size", "desc_act"), [(128, True), (32, False), (-1, False)])
def test_a_decode_sized_layer(group_size, desc_act):
    gen = torch.Generator().manual_seed(0)
    tensors = random_gptq_tensors(4096, 1024, 4, group_size, desc_act=desc_act, generator=gen)
    layer = QuantLinear.from_tensors(
        tensors, 4, group_size, desc_act=desc_act, kernel="torch-int4", registry=load_plugins()
    ).to("cuda")
    for rows in (1, 7, 64):
        x = torch.randn(rows, 4096, generator=gen).to(torch.bfloat16).cuda()
        with torch.no_grad():
            out = layer(x)
        assert layer.kernel_spec.name == "torch-int4"
        err = relative_error(out, float64_reference(layer, x))
        assert err < TOLERANCE["bfloat16"], f"{rows} rows: relative error {err:.2e}"
