"""Selection through the installed plugins: the CPU kernels win what they serve, and the
reference kernel gets the rest with every refusal readable."""

import platform

import pytest
import torch

from ferrule_core import KernelRequest, load_plugins
from ferrule_core.quant_linear import QuantLinear
from ferrule_core.testing import float64_reference, random_gptq_tensors, relative_error
from ferrule_cpu import checks

X86 = platform.machine().lower() not in ("aarch64", "arm64")


@pytest.fixture(scope="module")
def registry():
    return load_plugins()


def _layer(registry, in_features, out_features, bits, group_size, **kw):
    tensors = random_gptq_tensors(in_features, out_features, bits, group_size, **kw)
    return QuantLinear.from_tensors(
        tensors, bits, group_size, desc_act=kw.get("desc_act", False), registry=registry
    )


def _run(layer, dtype):
    x = torch.randn(3, layer.in_features).to(dtype)
    with torch.no_grad():
        out = layer(x)
    return layer.kernel_spec.name, relative_error(out, float64_reference(layer, x))


def test_cpu_int4_wins_a_4_bit_g128_layer(registry):
    layer = _layer(registry, 256, 64, 4, 128)
    name, err = _run(layer, torch.bfloat16)
    assert name == "cpu-int4" and err < 2e-2
    assert "kernel=cpu-int4" in repr(layer)


def test_cpu_int4_wins_an_act_order_layer(registry):
    layer = _layer(registry, 256, 64, 4, 64, desc_act=True)
    assert _run(layer, torch.bfloat16)[0] == "cpu-int4"


def test_cpu_int8_wins_an_8_bit_per_channel_layer(registry):
    layer = _layer(registry, 256, 48, 8, -1, sym=False)
    name, err = _run(layer, torch.bfloat16)
    assert name == "cpu-int8" and err < 2e-2


def test_output_features_not_a_multiple_of_16_fall_to_the_reference(registry):
    layer = _layer(registry, 256, 24, 4, 128)
    assert _run(layer, torch.bfloat16)[0] == "reference"
    request = layer.kernel_request(torch.device("cpu"), torch.bfloat16)
    reason = registry.kernel_reasons("linear", request)["cpu-int4"]
    assert "out_features=24 is not a multiple of 16" in reason


def test_grouped_8_bit_falls_to_the_reference_with_both_reasons(registry):
    layer = _layer(registry, 256, 64, 8, 128)
    assert _run(layer, torch.bfloat16)[0] == "reference"
    reasons = registry.kernel_reasons(
        "linear", layer.kernel_request(torch.device("cpu"), torch.bfloat16)
    )
    assert reasons["cpu-int8"] == "supports group sizes -1, not 128"
    assert reasons["cpu-int4"] == "supports bits 2, 3, 4, not 8"
    assert reasons["reference"] is None


@pytest.mark.skipif(not X86, reason="x86 only: aarch64 torch vectorizes float32 too")
def test_float32_activations_on_x86_fall_to_the_reference_saying_why(registry):
    layer = _layer(registry, 256, 64, 4, 128)
    name, err = _run(layer, torch.float32)
    assert name == "reference" and err < 1e-5
    request = layer.kernel_request(torch.device("cpu"), torch.float32)
    reason = registry.kernel_reasons("linear", request)["cpu-int4"]
    assert "only for bfloat16" in reason and "float32" in reason and "Cast activations" in reason


def test_explicit_choice_of_a_refusing_kernel_lists_every_reason(registry):
    tensors = random_gptq_tensors(256, 24, 4, 128)
    layer = QuantLinear.from_tensors(tensors, 4, 128, kernel="cpu-int4", registry=registry)
    with pytest.raises(Exception, match="cpu-int4' cannot serve") as info:
        layer(torch.randn(2, 256).to(torch.bfloat16))
    assert "reference: accepts" in str(info.value)


def test_a_missing_torch_op_is_a_reason_naming_the_version(monkeypatch):
    monkeypatch.setattr(checks, "INT4_OPS", ("_no_such_int4_op",))
    request = KernelRequest("cpu", 4, 128, dtype="bfloat16", in_features=256, out_features=64)
    reason = checks.check_int4(request)
    assert reason.startswith("needs torch>=2.6 for aten._no_such_int4_op")
    assert torch.__version__ in reason


def test_int8_refuses_in_features_its_kernel_would_overrun():
    request = KernelRequest("cpu", 8, -1, dtype="bfloat16", in_features=20, out_features=64)
    assert "in_features divisible by 16" in checks.check_int8(request)
    ok = KernelRequest("cpu", 8, -1, dtype="bfloat16", in_features=32, out_features=64)
    assert checks.check_int8(ok) is None


def test_unknown_shapes_are_not_refused():
    request = KernelRequest("cpu", 4, 128, dtype="bfloat16")  # in/out_features 0: unknown
    assert checks.check_int4(request) is None and checks.check_int8(request) is None


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ("x86_64", ("bfloat16",)),
        ("AMD64", ("bfloat16",)),
        ("aarch64", ("bfloat16", "float16", "float32")),
        ("arm64", ("bfloat16", "float16", "float32")),
    ],
)
def test_vectorized_dtypes_by_machine(machine, expected):
    assert checks.vectorized_dtypes(machine) == expected
