"""Kernels by row count (``preferred_rows``) and sorted act-order rows (``sorted_groups``)."""

from __future__ import annotations

import pytest
import torch

from ferrule_core import KernelSpec, QuantLinear, hookimpl, load_plugins
from ferrule_core.format import dequantize
from ferrule_core.specs import KernelRequest
from ferrule_core.testing import float64_reference, random_gptq_tensors, relative_error

REQUEST = KernelRequest(platform="cpu", bits=4, group_size=32, dtype="float32")


class Recording:
    """A float64 kernel that records which rows it served and what layer it saw."""

    def __init__(self, name, layer, calls, handles_input_perm=False):
        self.name, self.layer, self.calls = name, layer, calls
        self.handles_input_perm = handles_input_perm
        self.g_idx = layer.g_idx.clone()
        calls.append((name, "built"))

    def forward(self, x):
        self.calls.append((self.name, x.numel() // self.layer.in_features))
        layer = self.layer
        if self.handles_input_perm and layer.input_perm is not None:
            x = x.index_select(-1, layer.input_perm)
        weight = dequantize(
            layer.qweight, layer.qzeros, layer.scales, layer.g_idx, layer.bits, dtype=torch.float64
        )
        return (x.double() @ weight).to(x.dtype)


def _spec(name, calls, priority=0, **kw):
    handles = kw.pop("handles_input_perm", False)
    return KernelSpec(
        name=name,
        kind="linear",
        platforms=("cpu",),
        priority=priority,
        factory=lambda layer: Recording(name, layer, calls, handles),
        **kw,
    )


def _registry(*kernels):
    class Stack:
        @hookimpl
        def ferrule_register_kernels(self):
            return list(kernels)

    return load_plugins(extra=[Stack()], use_entry_points=False)


def _plan(registry, choice=None):
    return [
        (low, high, spec.name)
        for low, high, spec in registry.select_kernels_by_rows("linear", REQUEST, choice)
    ]


def test_rows_plan_prefers_in_range_then_priority():
    calls = []
    registry = _registry(
        _spec("gemv", calls, priority=30, preferred_rows=(1, 8)),
        _spec("split", calls, priority=20, preferred_rows=(1, 32)),
        _spec("gemm", calls, priority=20, preferred_rows=(33, None)),
    )
    assert _plan(registry) == [(1, 8, "gemv"), (9, 32, "split"), (33, None, "gemm")]
    # An explicit choice serves every row count.
    assert _plan(registry, "gemm") == [(1, None, "gemm")]


def test_rows_plan_falls_back_to_the_best_outside_every_range():
    calls = []
    registry = _registry(
        _spec("small", calls, priority=30, preferred_rows=(1, 4)),
        _spec("plain", calls, priority=5, preferred_rows=(2, 3)),
    )
    # 5+ is in no kernel's range: the highest priority (small) serves it; 2-3 still small.
    assert _plan(registry) == [(1, None, "small")]


def test_preferred_rows_must_be_an_increasing_range():
    with pytest.raises(ValueError, match="preferred_rows"):
        _spec("bad", [], preferred_rows=(8, 4))
    with pytest.raises(ValueError, match="preferred_rows"):
        _spec("bad", [], preferred_rows=(0, None))


def test_layer_builds_each_kernel_once_and_switches_by_rows():
    calls = []
    registry = _registry(
        _spec("gemv", calls, priority=30, preferred_rows=(1, 8)),
        _spec("gemm", calls, priority=20),
    )
    tensors = random_gptq_tensors(64, 32, 4, 32)
    layer = QuantLinear.from_tensors(tensors, 4, 32, registry=registry)
    for rows in (1, 8, 9, 3, 40):
        x = torch.randn(rows, 64)
        assert relative_error(layer(x), float64_reference(layer, x)) < 1e-6
    assert [c for c in calls if c[1] == "built"] == [("gemv", "built"), ("gemm", "built")]
    served = [c for c in calls if c[1] != "built"]
    assert served == [("gemv", 1), ("gemv", 8), ("gemm", 9), ("gemv", 3), ("gemm", 40)]
    assert [s.name for s in layer.kernel_specs] == ["gemv", "gemm"]
    assert layer.kernel_spec.name == "gemm"


@pytest.mark.parametrize("handles", [False, True])
def test_sorted_groups_permutes_rows_once_and_keeps_the_function(handles):
    calls = []
    registry = _registry(_spec("sorted", calls, sorted_groups=True, handles_input_perm=handles))
    gen = torch.Generator().manual_seed(3)
    tensors = random_gptq_tensors(128, 64, 4, 32, desc_act=True, sym=False, generator=gen)
    layer = QuantLinear.from_tensors(tensors, 4, 32, desc_act=True, sym=False, registry=registry)
    before_weight = layer.dequantize_weight(torch.float64)
    before_state = {k: v.clone() for k, v in layer.state_dict().items()}
    x = torch.randn(5, 128)
    out = layer(x)
    assert layer.input_perm is not None and layer.input_perm.dtype == torch.int32
    assert bool((layer.g_idx[1:] >= layer.g_idx[:-1]).all()), "g_idx is sorted"
    # Act-order with full groups: sorted g_idx is arange(K) // group_size.
    assert torch.equal(layer.g_idx, (torch.arange(128) // 32).to(torch.int32))
    assert relative_error(out, float64_reference(layer, x)) < 1e-6
    assert torch.equal(layer.dequantize_weight(torch.float64), before_weight)
    after_state = layer.state_dict()
    assert set(after_state) == set(before_state), "input_perm is not saved"
    for name, tensor in before_state.items():
        assert torch.equal(after_state[name], tensor), f"{name} is saved in checkpoint order"
    # Loading checkpoint-order tensors drops the permutation; the next call sorts again.
    layer.load_state_dict(before_state)
    assert layer.input_perm is None
    assert relative_error(layer(x), float64_reference(layer, x)) < 1e-6
    assert layer.input_perm is not None


def test_sort_groups_leaves_an_in_order_layer_alone():
    calls = []
    registry = _registry(_spec("sorted", calls, sorted_groups=True))
    tensors = random_gptq_tensors(64, 32, 3, 32)
    layer = QuantLinear.from_tensors(tensors, 3, 32, registry=registry)
    qweight = layer.qweight.clone()
    layer(torch.randn(2, 64))
    assert layer.input_perm is None
    assert torch.equal(layer.qweight, qweight)


@pytest.mark.parametrize("bits", [2, 3, 8])
def test_sorted_rows_at_other_bit_widths(bits):
    calls = []
    registry = _registry(_spec("sorted", calls, sorted_groups=True))
    tensors = random_gptq_tensors(96, 32, bits, 32, desc_act=True)
    layer = QuantLinear.from_tensors(tensors, bits, 32, desc_act=True, registry=registry)
    x = torch.randn(3, 96)
    assert relative_error(layer(x), float64_reference(layer, x)) < 1e-6
    assert layer.input_perm is not None


def test_preferred_rows_may_depend_on_the_layer_shape():
    """A kernel ahead on wide layers from fewer rows: ``preferred_rows_for(request)``."""
    calls = []

    def by_width(request):
        return (9, None) if request.out_features >= 64 else (256, None)

    registry = _registry(
        _spec("gemv", calls, priority=30, preferred_rows=(1, 8)),
        _spec("split", calls, priority=20),
        _spec("wide", calls, priority=22, preferred_rows=(256, None), preferred_rows_for=by_width),
    )
    wide = KernelRequest(platform="cpu", bits=4, group_size=32, dtype="float32", out_features=64)
    narrow = KernelRequest(platform="cpu", bits=4, group_size=32, dtype="float32", out_features=32)

    def plan(request):
        return [
            (lo, hi, s.name) for lo, hi, s in registry.select_kernels_by_rows("linear", request)
        ]

    assert plan(wide) == [(1, 8, "gemv"), (9, None, "wide")]
    assert plan(narrow) == [(1, 8, "gemv"), (9, 255, "split"), (256, None, "wide")]
    assert registry.kernels["wide"].capabilities()["preferred_rows"] == "256+ (by layer shape)"

    def broken(request):
        return (9, 4)

    bad = _registry(_spec("bad", calls, preferred_rows_for=broken))
    with pytest.raises(ValueError, match=r"preferred_rows_for gave \(9, 4\)"):
        bad.select_kernels_by_rows("linear", wide)
