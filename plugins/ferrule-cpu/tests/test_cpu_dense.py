"""``cpu-dense-onednn`` against a float64 matmul, below and above its row threshold."""

from __future__ import annotations

import pytest
import torch

from ferrule_core import KernelRequest, load_plugins
from ferrule_cpu.dense import PACKED_MAX_ROWS, OneDnnDenseKernel, onednn_unavailable

pytestmark = pytest.mark.skipif(onednn_unavailable() is not None, reason="no oneDNN")


class Layer(torch.nn.Module):
    def __init__(self, out_features: int, in_features: int, bias: bool):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(out_features, in_features) / 8, False)
        self.bias = torch.nn.Parameter(torch.randn(out_features), False) if bias else None


@pytest.mark.parametrize("rows", [1, 7, PACKED_MAX_ROWS, PACKED_MAX_ROWS + 1, 600])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_a_float64_matmul(rows, bias):
    torch.manual_seed(rows)
    layer = Layer(48, 80, bias)
    kernel = OneDnnDenseKernel(layer)
    x = torch.randn(2, rows, 80)
    expected = x.double() @ layer.weight.double().t()
    if bias:
        expected += layer.bias.double()
    got = kernel.forward(x)
    assert got.shape == (2, rows, 48) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_a_changed_weight_is_packed_again():
    layer = Layer(16, 32, bias=False)
    kernel = OneDnnDenseKernel(layer)
    x = torch.randn(3, 32)
    kernel.forward(x)
    with torch.no_grad():
        layer.weight.mul_(2)
    torch.testing.assert_close(kernel.forward(x), x @ layer.weight.t(), rtol=1e-5, atol=1e-5)


def test_selected_for_unquantized_float32_layers_only():
    registry = load_plugins()
    dense = KernelRequest(platform="cpu", dtype="float32", in_features=32, out_features=16)
    assert registry.select_kernel("linear", dense).name == "cpu-dense-onednn"
    reasons = registry.kernel_reasons("linear", KernelRequest(platform="cpu", dtype="bfloat16"))
    assert "float32" in reasons["cpu-dense-onednn"]
    quantized = KernelRequest(platform="cpu", bits=4, group_size=128, dtype="float32")
    assert "bits" in registry.kernel_reasons("linear", quantized)["cpu-dense-onednn"]
