"""Conformance tests for linear kernels: output against a float64 dequantize-then-matmul.

A kernel plugin's tests subclass :class:`KernelConformance` in a few lines::

    from ferrule_core.testing import KernelConformance


    class TestMyKernel(KernelConformance):
        kernel = "my-int4"
        device = "cuda"
        dtypes = ("float16", "bfloat16")

Every combination of bit width, group size, act-order and grid in ``CASES`` runs on
random layers of awkward shapes; a combination the kernel refuses is skipped with the
kernel's own reason, and at least one combination must be accepted.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

from ferrule_core.format import dequantize, num_groups, pack_cols, pack_rows
from ferrule_core.plugins import load_plugins
from ferrule_core.quant_linear import QuantLinear
from ferrule_core.registry import Registry

# Relative Frobenius error allowed against the float64 oracle, by activation dtype.
TOLERANCE = {"float64": 1e-10, "float32": 1e-5, "float16": 3e-3, "bfloat16": 2e-2}

BITS = (2, 3, 4, 8)
GROUP_SIZES = (-1, 32, 128)
# (in_features, out_features): a plain shape, an odd group count (160/32 = 5 groups, a
# ragged last group at 128) and an output width that is no power of two.
SHAPES = ((256, 64), (160, 96))
CASES = [
    pytest.param(
        bits,
        group,
        desc_act,
        sym,
        id=f"{bits}b-g{group}-{'act' if desc_act else 'seq'}-{'sym' if sym else 'asym'}",
    )
    for bits, group, desc_act, sym in itertools.product(
        BITS, GROUP_SIZES, (False, True), (True, False)
    )
]


def random_gptq_tensors(
    in_features: int,
    out_features: int,
    bits: int,
    group_size: int,
    *,
    desc_act: bool = False,
    sym: bool = True,
    scale_dtype: torch.dtype = torch.float16,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Random ``gptq_v2`` tensors of a layer: codes, zeros, positive scales, ``g_idx``.

    With ``desc_act`` the rows are assigned to groups through a random permutation, the
    way act-order quantization leaves them.
    """
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    levels = 2**bits
    groups = num_groups(in_features, group_size)
    codes = torch.randint(0, levels, (in_features, out_features), generator=gen, dtype=torch.int32)
    if sym:
        zeros = torch.full((groups, out_features), levels // 2, dtype=torch.int32)
    else:
        zeros = torch.randint(0, levels, (groups, out_features), generator=gen, dtype=torch.int32)
    scales = (torch.rand(groups, out_features, generator=gen) * 0.02 + 0.001) / levels**0.5
    size = in_features if group_size == -1 else group_size
    order = torch.randperm(in_features, generator=gen) if desc_act else torch.arange(in_features)
    g_idx = torch.empty(in_features, dtype=torch.int32)
    g_idx[order] = (torch.arange(in_features) // size).to(torch.int32)
    return {
        "qweight": pack_rows(codes, bits),
        "qzeros": pack_cols(zeros, bits),
        "scales": scales.to(scale_dtype),
        "g_idx": g_idx,
    }


def float64_reference(layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """The oracle: dequantize in float64 on the CPU, then one float64 matmul.

    It reads the layer's tensors in the checkpoint's row order, so a layer whose rows a
    kernel sorted (``QuantLinear.sort_groups``) is still checked against what it stores.
    """
    qweight, g_idx = (t.detach().cpu() for t in layer._original_rows())
    weight = dequantize(
        qweight,
        layer.qzeros.cpu(),
        layer.scales.cpu(),
        g_idx,
        layer.bits,
        dtype=torch.float64,
    )
    out = x.detach().cpu().double() @ weight
    if layer.bias is not None:
        out = out + layer.bias.detach().cpu().double()
    return out


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual = actual.detach().cpu().double()
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-30))


class KernelConformance:
    """Base class: set ``kernel`` (and ``device``, ``dtypes``) in a subclass."""

    kernel: str = ""
    device: str = "cpu"
    dtypes: tuple[str, ...] = ("float32",)
    shapes: tuple[tuple[int, int], ...] = SHAPES
    batch_shapes: tuple[tuple[int, ...], ...] = ((1,), (7,), (2, 5))

    @pytest.fixture(scope="class")
    @classmethod
    def registry(cls) -> Registry:
        return load_plugins()

    @pytest.fixture(scope="class")
    @classmethod
    def spec(cls, registry: Registry) -> Any:
        if cls.device == "cuda" and not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
        return registry.kernel(cls.kernel)

    def make_layer(self, registry, bits, group_size, desc_act, sym, shape, seed=0) -> QuantLinear:
        in_features, out_features = shape
        gen = torch.Generator().manual_seed(seed)
        tensors = random_gptq_tensors(
            in_features, out_features, bits, group_size, desc_act=desc_act, sym=sym, generator=gen
        )
        bias = torch.randn(out_features, generator=gen).to(torch.float16)
        layer = QuantLinear.from_tensors(
            tensors,
            bits,
            group_size,
            bias=bias,
            desc_act=desc_act,
            sym=sym,
            kernel=self.kernel,
            registry=registry,
        )
        return layer.to(self.device)

    def refusal(self, spec, layer: QuantLinear, dtype: str) -> str | None:
        request = layer.kernel_request(torch.device(self.device), getattr(torch, dtype))
        return spec.reject_reason(request)

    # --- the tests -------------------------------------------------------------------

    def test_registered_as_linear_kernel(self, spec) -> None:
        assert spec.kind == "linear"
        assert spec.plugin, "the loader stamps the providing plugin's name"
        assert callable(spec.factory)
        assert set(spec.bits) <= {2, 3, 4, 8}, f"{spec.name} declares bits outside GPTQ's"

    def test_accepts_at_least_one_case(self, registry, spec) -> None:
        accepted = []
        for bits, group, desc_act, sym in itertools.product(
            BITS, GROUP_SIZES, (False, True), (True, False)
        ):
            for shape in self.shapes:
                layer = self.make_layer(registry, bits, group, desc_act, sym, shape)
                if any(self.refusal(spec, layer, d) is None for d in self.dtypes):
                    accepted.append((bits, group, desc_act, sym, shape))
        assert accepted, (
            f"kernel {spec.name!r} accepts none of the conformance cases on {self.device}"
        )

    @pytest.mark.parametrize(("bits", "group_size", "desc_act", "sym"), CASES)
    def test_matches_float64_reference(
        self, registry, spec, bits, group_size, desc_act, sym
    ) -> None:
        ran = 0
        reasons = set()
        for shape_index, shape in enumerate(self.shapes):
            layer = self.make_layer(
                registry, bits, group_size, desc_act, sym, shape, seed=shape_index
            )
            for dtype in self.dtypes:
                reason = self.refusal(spec, layer, dtype)
                if reason is not None:
                    reasons.add(reason)
                    continue
                for batch in self.batch_shapes:
                    gen = torch.Generator().manual_seed(len(batch) * 100 + batch[-1])
                    x = torch.randn(*batch, shape[0], generator=gen).to(getattr(torch, dtype))
                    x = x.to(self.device)
                    with torch.no_grad():
                        out = layer(x)
                    assert layer.kernel_spec is not None and layer.kernel_spec.name == spec.name
                    assert out.shape == (*batch, shape[1])
                    assert out.dtype == x.dtype
                    err = relative_error(out, float64_reference(layer, x))
                    assert err < TOLERANCE[dtype], (
                        f"{spec.name}: relative error {err:.2e} > {TOLERANCE[dtype]:.0e} for "
                        f"{bits}-bit g{group_size} desc_act={desc_act} sym={sym} {shape} {dtype} "
                        f"batch {batch}"
                    )
                    ran += 1
        if not ran:
            pytest.skip("; ".join(sorted(reasons)))

    def test_non_contiguous_input(self, registry, spec) -> None:
        for bits, group in itertools.product(BITS, GROUP_SIZES):
            layer = self.make_layer(registry, bits, group, False, True, self.shapes[0])
            dtype = next((d for d in self.dtypes if self.refusal(spec, layer, d) is None), None)
            if dtype is None:
                continue
            wide = torch.randn(5, 2 * layer.in_features).to(getattr(torch, dtype)).to(self.device)
            x = wide[:, ::2]
            assert not x.is_contiguous()
            with torch.no_grad():
                err = relative_error(layer(x), float64_reference(layer, x))
            assert err < TOLERANCE[dtype]
            return
        pytest.skip("the kernel accepts no plain case")

    def test_refusal_names_a_reason(self, registry, spec) -> None:
        layer = self.make_layer(registry, 4, 128, False, True, self.shapes[0])
        request = layer.kernel_request(torch.device(self.device), torch.float32)
        elsewhere = type(request)(**{**vars(request), "platform": "no-such-platform"})
        if "*" in spec.platforms:
            elsewhere = type(request)(**{**vars(request), "dtype": "no-such-dtype"})
        reason = spec.reject_reason(elsewhere)
        assert isinstance(reason, str) and reason, "a refused request must come with a reason"
