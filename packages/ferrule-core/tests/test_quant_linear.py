from __future__ import annotations

import pytest
import torch

from ferrule_core import ConfigError, QuantLinear, SelectionError, load_plugins
from ferrule_core.testing import float64_reference, random_gptq_tensors, relative_error


@pytest.fixture(scope="module")
def registry():
    return load_plugins()


def test_from_linear_round_to_nearest_is_close(registry):
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 96)
    for bits, bound in ((8, 0.01), (4, 0.15), (3, 0.3)):
        layer = QuantLinear.from_linear(linear, bits, 64, dtype=torch.float32, registry=registry)
        x = torch.randn(4, 256)
        with torch.no_grad():
            err = relative_error(layer(x), linear(x).double())
        assert err < bound, (bits, err)
        assert layer.kernel_spec.name == "reference"


def test_forward_matches_the_float64_oracle_with_bias_and_act_order(registry):
    tensors = random_gptq_tensors(128, 64, 4, 32, desc_act=True, sym=False)
    bias = torch.randn(64).half()
    layer = QuantLinear.from_tensors(
        tensors, 4, 32, bias=bias, desc_act=True, sym=False, registry=registry
    )
    x = torch.randn(3, 5, 128)
    out = layer(x)
    assert out.shape == (3, 5, 64)
    assert relative_error(out, float64_reference(layer, x)) < 1e-5
    assert torch.allclose(layer.dequantize_weight(torch.float64).t(), _slow_dequant(layer))


def _slow_dequant(layer):
    from ferrule_core.format import unpack_cols, unpack_rows

    q = unpack_rows(layer.qweight, layer.bits).double()
    z = unpack_cols(layer.qzeros, layer.bits).double()
    s = layer.scales.double()
    g = layer.g_idx.long()
    return (q - z[g]) * s[g]


def test_kernel_is_chosen_again_after_a_move_or_new_weights(registry):
    tensors = random_gptq_tensors(64, 32, 4, 32)
    layer = QuantLinear.from_tensors(tensors, 4, 32, registry=registry)
    layer(torch.randn(2, 64))
    assert layer.kernel_spec is not None
    layer.to(torch.float64)
    assert layer.kernel_spec is None and layer.scales.dtype == torch.float64
    x = torch.randn(2, 64, dtype=torch.float64)
    assert relative_error(layer(x), float64_reference(layer, x)) < 1e-12

    other = QuantLinear(64, 32, 4, 32, dtype=torch.float64, registry=registry)
    other(x)
    other.load_state_dict(layer.state_dict())
    assert other.kernel_spec is None
    assert torch.equal(other(x), layer(x))


def test_an_explicit_kernel_that_cannot_serve_says_why(registry):
    layer = QuantLinear.from_tensors(
        random_gptq_tensors(64, 32, 4, 32), 4, 32, kernel="nope", registry=registry
    )
    with pytest.raises(
        SelectionError, match=r"no linear kernel named 'nope'; installed: .*reference"
    ):
        layer(torch.randn(1, 64))


def test_bad_shapes_and_inputs_are_named():
    with pytest.raises(ConfigError, match="in_features=100 cannot be packed at 3 bits"):
        QuantLinear(100, 64, 3, 32)
    with pytest.raises(ConfigError, match="bits=5"):
        QuantLinear(64, 64, 5, 32)
    layer = QuantLinear(64, 32, 4, 32)
    with pytest.raises(ValueError, match="last dimension 64, got shape \\(2, 63\\)"):
        layer(torch.randn(2, 63))
    assert "kernel=not chosen yet" in repr(layer)


def test_state_dict_holds_the_gptq_tensors():
    layer = QuantLinear(256, 64, 3, 128, bias=True)
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in layer.state_dict().items()}
    assert shapes == {
        "qweight": ((24, 64), torch.int32),
        "qzeros": ((2, 6), torch.int32),
        "scales": ((2, 64), torch.float16),
        "g_idx": ((256,), torch.int32),
        "bias": ((64,), torch.float16),
    }
