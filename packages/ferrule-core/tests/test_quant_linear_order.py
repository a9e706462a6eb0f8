"""QuantLinear's input and output permutations: what a model folds act-order into at load."""

from __future__ import annotations

import pytest
import torch

from ferrule_core import QuantLinear, load_plugins
from ferrule_core.format import default_g_idx
from ferrule_core.testing import random_gptq_tensors


@pytest.fixture(scope="module")
def registry():
    return load_plugins()


def _layer(registry, *, desc_act=True, bits=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tensors = random_gptq_tensors(128, 64, bits, 32, desc_act=desc_act, sym=False, generator=gen)
    bias = torch.randn(64, generator=gen).half()
    return QuantLinear.from_tensors(
        tensors, bits, 32, bias=bias, desc_act=desc_act, sym=False, registry=registry
    )


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_permuted_inputs_make_an_in_order_layer_with_the_same_outputs(registry, bits):
    layer = _layer(registry, bits=bits)
    x = torch.randn(5, 128)
    with torch.no_grad():
        expected = layer(x)
    layer = _layer(registry, bits=bits)  # the same tensors, as loaded
    order = layer.input_order()
    assert order is not None
    layer.permute_inputs(order)
    assert torch.equal(layer.g_idx, default_g_idx(128, 32))
    assert not layer.desc_act and layer.input_order() is None
    with torch.no_grad():
        got = layer(x[:, order])
    assert layer.input_perm is None  # nothing left to gather
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_permuted_outputs(registry):
    layer = _layer(registry)
    x = torch.randn(3, 128)
    with torch.no_grad():
        expected = layer(x)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(3))
    fresh = _layer(registry)
    fresh.permute_outputs(order)
    with torch.no_grad():
        got = fresh(x)
    torch.testing.assert_close(got, expected[:, order], rtol=1e-5, atol=1e-5)


def test_in_order_layers_ask_for_no_order_and_bad_orders_are_refused(registry):
    assert _layer(registry, desc_act=False).input_order() is None
    layer = _layer(registry)
    for bad in (torch.arange(127), torch.zeros(128, dtype=torch.long), torch.arange(1, 129)):
        with pytest.raises(ValueError, match=r"permutation of range\(in_features=128\)"):
            layer.permute_inputs(bad)
    with pytest.raises(ValueError, match=r"permutation of range\(out_features=64\)"):
        layer.permute_outputs(torch.arange(65))
    layer.sort_groups()  # a kernel sorted the rows: too late to fold
    assert layer.input_order() is None
    with pytest.raises(ValueError, match="already sorted"):
        layer.permute_inputs(torch.arange(128))
