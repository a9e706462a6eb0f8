"""Round-to-nearest grids: error bounds, zero points, degenerate rows, act-order groups."""

from __future__ import annotations

import pytest
import torch

from ferrule_core.errors import FormatError
from ferrule_core.format import (
    SUPPORTED_BITS,
    check_tensors,
    dequantize,
    fit_grid,
    pack,
    quantize_rtn,
)


def dequantized(q, *, checkpoint_format="gptq_v2", scale_dtype=torch.float64):
    t = pack(q, checkpoint_format=checkpoint_format, scale_dtype=scale_dtype)
    return dequantize(
        t["qweight"], t["qzeros"], t["scales"], t["g_idx"], q.bits,
        checkpoint_format=checkpoint_format, dtype=torch.float64,
    )  # fmt: skip


def assert_within_half_step(q, weight):
    """|W_hat - W| <= scale / 2 per element, up to float32 rounding of x / scale."""
    err = (dequantized(q) - weight.t().double()).abs()
    half_step = q.scales.double()[q.g_idx.long()] / 2
    assert torch.all(err <= half_step * (1 + 1e-4) + 1e-12), float((err - half_step).max())


def act_order_g_idx(k: int, group_size: int, seed: int) -> torch.Tensor:
    order = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[order] = (torch.arange(k) // group_size).to(torch.int32)
    return g_idx


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group_size", [32, -1, 48])
def test_rtn_error_is_at_most_half_a_step(bits, sym, group_size):
    weight = torch.randn(32, 160, generator=torch.Generator().manual_seed(bits))
    q = quantize_rtn(weight, bits, group_size, sym=sym)
    groups = 1 if group_size == -1 else -(-160 // group_size)
    assert q.codes.shape == (160, 32) and q.zeros.shape == q.scales.shape == (groups, 32)
    assert q.codes.dtype == q.zeros.dtype == q.g_idx.dtype == torch.int32
    assert int(q.codes.min()) >= 0 and int(q.codes.max()) < 1 << bits
    assert_within_half_step(q, weight)
    if sym:
        assert torch.all(q.zeros == 1 << (bits - 1))


@pytest.mark.parametrize("sym", [True, False])
def test_act_order_groups_are_fitted_on_their_own_rows(sym):
    bits, group_size = 4, 32
    weight = torch.randn(16, 128, generator=torch.Generator().manual_seed(7))
    g_idx = act_order_g_idx(128, group_size, seed=1)
    q = quantize_rtn(weight, bits, group_size, sym=sym, g_idx=g_idx)
    assert torch.equal(q.g_idx, g_idx)
    for g in range(4):
        scale, zero = fit_grid(weight[:, g_idx == g], bits, sym)
        assert torch.equal(q.scales[g], scale)
        assert torch.equal(q.zeros[g], zero)
    assert_within_half_step(q, weight)
    plain = quantize_rtn(weight, bits, group_size, sym=sym)
    assert not torch.equal(plain.scales, q.scales)  # the assignment really mattered


def test_fit_grid_known_values():
    rows = torch.tensor([[-1.0, 0.0, 2.0], [0.5, 1.5, 1.0], [-3.0, -1.0, -2.0]])
    scale, zero = fit_grid(rows, 2, sym=False)  # maxq = 3
    assert scale.tolist() == [1.0, 0.5, 1.0]  # the range always includes 0
    assert zero.tolist() == [1, 0, 3]
    assert zero.dtype == torch.int32
    scale, zero = fit_grid(torch.tensor([[-1.0, 3.0]]), 4, sym=True)
    assert torch.allclose(scale, torch.tensor([6.0 / 15]))
    assert zero.tolist() == [8]


@pytest.mark.parametrize("sym", [True, False])
def test_constant_and_zero_rows_stay_finite(sym):
    weight = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    weight[0] = 0.0
    weight[1] = 3.0
    weight[2] = -2.0
    weight[3] = 1e-40  # denormal float32
    weight[4, :32] = 0.0  # one all-zero group
    scale, _ = fit_grid(weight, 4, sym)
    assert torch.all(torch.isfinite(scale)) and torch.all(scale > 0)
    q = quantize_rtn(weight, 4, 32, sym=sym)
    assert torch.all(torch.isfinite(q.scales)) and torch.all(q.scales > 0)
    w_hat = dequantized(q)
    assert torch.all(torch.isfinite(w_hat))
    assert torch.all(w_hat[:, 0] == 0) and torch.all(w_hat[:32, 4] == 0)
    assert_within_half_step(q, weight)


def test_pack_gives_valid_checkpoint_tensors_in_both_formats():
    weight = torch.randn(32, 96, generator=torch.Generator().manual_seed(2))
    q = quantize_rtn(weight, 3, 32, sym=True, g_idx=act_order_g_idx(96, 32, seed=3))
    v2 = pack(q)
    assert v2["scales"].dtype == torch.float16 and v2["g_idx"].dtype == torch.int32
    check_tensors(**v2, bits=3, in_features=96, out_features=32, group_size=32)
    v1 = pack(q, checkpoint_format="gptq")
    assert torch.equal(v1["qweight"], v2["qweight"])
    assert not torch.equal(v1["qzeros"], v2["qzeros"])
    assert torch.equal(
        dequantized(q, checkpoint_format="gptq"), dequantized(q, checkpoint_format="gptq_v2")
    )


def test_pack_v1_refuses_asymmetric_zero_of_zero():
    weight = torch.rand(8, 32, generator=torch.Generator().manual_seed(4))  # all >= 0
    q = quantize_rtn(weight, 4, 32, sym=False)
    assert torch.all(q.zeros == 0)
    with pytest.raises(FormatError, match=r'8 of 8 zero points are 0.*checkpoint_format="gptq_v2"'):
        pack(q, checkpoint_format="gptq")
    assert_within_half_step(q, weight)


def test_bad_inputs_are_named():
    with pytest.raises(FormatError, match=r"weight has 1 NaN or infinite values"):
        fit_grid(torch.tensor([[0.0, float("nan")]]), 4, sym=True)
    with pytest.raises(FormatError, match=r"g_idx \(shape \(64,\), dtype torch.int32\).*\[0, 1\]"):
        quantize_rtn(torch.randn(4, 64), 4, 32, g_idx=torch.full((64,), 2, dtype=torch.int32))
    with pytest.raises(FormatError, match=r"2-D floating weight, got shape \(4,\)"):
        quantize_rtn(torch.randn(4), 4, 32)
