"""The kernels built directly: every activation dtype's numerics, act-order and padded
layouts, gradients, and the inputs torch's ops are fussy about."""

import pytest
import torch

from ferrule_core.format import pack_cols, pack_rows
from ferrule_core.quant_linear import QuantLinear
from ferrule_core.testing import float64_reference, random_gptq_tensors, relative_error
from ferrule_cpu.int4 import Int4CpuKernel
from ferrule_cpu.int8 import Int8CpuKernel

TOLERANCE = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def _layer(in_features, out_features, bits, group_size, seed=0, **kw):
    gen = torch.Generator().manual_seed(seed)
    tensors = random_gptq_tensors(in_features, out_features, bits, group_size, generator=gen, **kw)
    return QuantLinear.from_tensors(tensors, bits, group_size, desc_act=kw.get("desc_act", False))


def _error(kernel, layer, dtype, batch=(4,)):
    x = torch.randn(*batch, layer.in_features, generator=torch.Generator().manual_seed(1))
    x = x.to(dtype)
    out = kernel.forward(x)
    assert out.dtype == dtype and out.shape == (*batch, layer.out_features)
    return relative_error(out, float64_reference(layer, x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("bits", "group_size"), [(4, 128), (3, 32), (2, -1)])
def test_int4_numerics_in_every_dtype_the_op_takes(dtype, bits, group_size):
    # The selection check refuses float16/float32 on x86 (slow), not because they are wrong.
    layer = _layer(256, 32, bits, group_size, sym=False, desc_act=True)
    assert _error(Int4CpuKernel(layer), layer, dtype) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sym", [True, False])
def test_int8_numerics_in_every_dtype_the_op_takes(dtype, sym):
    layer = _layer(64, 40, 8, -1, sym=sym)
    assert _error(Int8CpuKernel(layer), layer, dtype, batch=(2, 3)) < TOLERANCE[dtype]


def test_act_order_gathers_activations_by_the_sorted_g_idx():
    layer = _layer(256, 32, 4, 64, desc_act=True, sym=False)
    kernel = Int4CpuKernel(layer)
    assert torch.equal(kernel.layout.rows, torch.argsort(layer.g_idx.long(), stable=True))
    assert not kernel.layout.padded
    assert _error(kernel, layer, torch.float32) < 1e-5
    in_order = Int4CpuKernel(_layer(256, 32, 4, 64))
    assert in_order.layout.rows is None


def _codes_layer(g_idx, out_features, bits=4, groups=None):
    """A layer with an arbitrary (here uneven) row-to-group assignment."""
    gen = torch.Generator().manual_seed(3)
    in_features = g_idx.numel()
    groups = groups or int(g_idx.max()) + 1
    codes = torch.randint(0, 2**bits, (in_features, out_features), generator=gen, dtype=torch.int32)
    zeros = torch.randint(0, 2**bits, (groups, out_features), generator=gen, dtype=torch.int32)
    scales = torch.rand(groups, out_features, generator=gen) * 0.01 + 0.001
    tensors = {
        "qweight": pack_rows(codes, bits),
        "qzeros": pack_cols(zeros, bits),
        "scales": scales.half(),
        "g_idx": g_idx.to(torch.int32),
    }
    group_size = -(-in_features // groups)
    return QuantLinear.from_tensors(tensors, bits, group_size, desc_act=True, sym=False)


def test_uneven_groups_from_any_g_idx_are_exact():
    g_idx = torch.cat([torch.zeros(72), torch.ones(24), torch.full((32,), 2)]).long()
    g_idx = g_idx[torch.randperm(128, generator=torch.Generator().manual_seed(0))]
    layer = _codes_layer(g_idx, 48, groups=3)
    kernel = Int4CpuKernel(layer)
    assert kernel.layout.padded and kernel.layout.group_size == 32
    assert _error(kernel, layer, torch.float32, batch=(5,)) < 1e-5
    assert _error(kernel, layer, torch.bfloat16, batch=(5,)) < 2e-2


def test_gradients_reach_the_input():
    layer = _layer(128, 32, 4, 32, sym=False, desc_act=True)
    kernel = Int4CpuKernel(layer)
    x = torch.randn(3, 128, dtype=torch.float32, requires_grad=True)
    grad_out = torch.randn(3, 32)
    kernel.forward(x).backward(grad_out)
    weight = layer.dequantize_weight(torch.float64)  # [N, K]
    expected = grad_out.double() @ weight
    assert relative_error(x.grad, expected) < 1e-5

    layer8 = _layer(64, 16, 8, -1, sym=False)
    x8 = torch.randn(2, 64, requires_grad=True)
    Int8CpuKernel(layer8).forward(x8).sum().backward()
    expected8 = layer8.dequantize_weight(torch.float64).sum(0).expand(2, -1)
    assert relative_error(x8.grad, expected8) < 1e-5


def test_no_graph_is_built_without_gradients():
    kernel = Int4CpuKernel(_layer(128, 32, 4, 32))
    with torch.no_grad():
        out = kernel.forward(torch.randn(2, 128, requires_grad=True))
    assert out.grad_fn is None


def test_int8_copies_activations_its_simd_loads_cannot_read():
    layer = _layer(64, 16, 8, -1, sym=False)
    kernel = Int8CpuKernel(layer)
    storage = torch.randn(3 * 64 + 1).to(torch.bfloat16)
    x = storage[1:].view(3, 64)  # contiguous, but 2 bytes off alignment: crashes the raw op
    assert x.data_ptr() % 16
    assert relative_error(kernel.forward(x), float64_reference(layer, x)) < 2e-2


def test_non_contiguous_and_empty_batches():
    layer = _layer(128, 32, 4, 32)
    kernel = Int4CpuKernel(layer)
    x = torch.randn(6, 256).to(torch.bfloat16)[:, ::2]
    assert relative_error(kernel.forward(x), float64_reference(layer, x)) < 2e-2
    assert kernel.forward(torch.empty(0, 128, dtype=torch.bfloat16)).shape == (0, 32)
    kernel8 = Int8CpuKernel(_layer(64, 16, 8, -1, sym=False))
    assert kernel8.forward(torch.empty(2, 0, 64, dtype=torch.bfloat16)).shape == (2, 0, 16)


def test_factories_refuse_layers_they_cannot_serve():
    with pytest.raises(ValueError, match="2, 3 and 4-bit"):
        Int4CpuKernel(_layer(64, 32, 8, -1))
    with pytest.raises(ValueError, match="out_features divisible by 16, got 24"):
        Int4CpuKernel(_layer(64, 24, 4, 32))
    with pytest.raises(ValueError, match="per-channel"):
        Int8CpuKernel(_layer(64, 32, 8, 32))
    with pytest.raises(ValueError, match="in_features divisible by 16, got 36"):
        Int8CpuKernel(_layer(36, 32, 8, -1))
    with pytest.raises(TypeError, match="float64"):
        Int4CpuKernel(_layer(64, 32, 4, 32)).forward(torch.randn(1, 64, dtype=torch.float64))


@pytest.mark.parametrize("sym", [True, False])
def test_low_bit_codes_are_recentred_so_bfloat16_loses_no_extra_precision(sym):
    # (q - 8) * s + (8 - z) * s cancels at 2 bits; storing q - z + 8 with a zero of 0 does not.
    layer = _layer(256, 64, 2, 128, sym=sym)
    kernel = Int4CpuKernel(layer)
    assert kernel.recentred and not kernel._table(torch.bfloat16)[..., 1].any()
    assert _error(kernel, layer, torch.bfloat16, batch=(16,)) < 5e-3
