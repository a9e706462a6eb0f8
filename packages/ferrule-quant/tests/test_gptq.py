"""GPTQ against its oracles: RTN, the format formula, the exact objective, and itself unblocked."""

from __future__ import annotations

import logging

import pytest
import torch

from ferrule_core import QuantizeConfig
from ferrule_core.format.grid import pack
from ferrule_core.format.tensors import dequantize
from ferrule_quant.gptq import DampingError, gptq_quantize
from ferrule_quant.rtn import rtn_quantize

ROWS, COLS, TOKENS = 96, 256, 1024


def correlated_problem(seed: int = 0, rows: int = ROWS, cols: int = COLS):
    """A weight, inputs X = Z @ A with a non-trivial covariance, and H = 2/n X^T X."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=gen) / cols**0.5 + 0.2 * torch.eye(cols)
    scale = torch.rand(cols, generator=gen) * 2 + 0.1  # uneven channel magnitudes
    x = torch.randn(TOKENS, cols, generator=gen) @ mix * scale
    weight = torch.randn(rows, cols, generator=gen) * 0.05
    return weight, x, 2 / TOKENS * x.T @ x


def output_error(x, weight, quantized_weight) -> float:
    return float((x @ (weight - quantized_weight.float()).T).norm())


@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("desc_act", [False, True], ids=["in-order", "act-order"])
@pytest.mark.parametrize("group_size", [128, -1], ids=["g128", "per-channel"])
@pytest.mark.parametrize("bits", [4, 3])
def test_gptq_beats_rtn_on_the_layer_output(bits, group_size, desc_act, sym):
    weight, x, hessian = correlated_problem()
    config = QuantizeConfig(bits=bits, group_size=group_size, desc_act=desc_act, sym=sym)
    gptq = output_error(x, weight, gptq_quantize(weight, hessian, config).weight)
    rtn = output_error(x, weight, rtn_quantize(weight, config).weight)
    assert gptq < 0.85 * rtn, (gptq, rtn)


@pytest.mark.parametrize("group_size", [128, 32, -1])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("kind", ["identity", "diagonal"])
def test_a_diagonal_hessian_makes_gptq_round_to_nearest(kind, sym, group_size):
    # With H diagonal, U is diagonal: no error reaches another column, so every grid is
    # fitted on the original columns and GPTQ rounds exactly as RTN does.
    weight, _, _ = correlated_problem(1)
    diag = torch.ones(COLS) if kind == "identity" else torch.rand(COLS) + 0.5
    config = QuantizeConfig(bits=4, group_size=group_size, sym=sym)
    gptq = gptq_quantize(weight, torch.diag(diag), config).quantized
    rtn = rtn_quantize(weight, config).quantized
    assert torch.equal(gptq.codes, rtn.codes)
    assert torch.equal(gptq.zeros, rtn.zeros)
    assert torch.equal(gptq.scales, rtn.scales)
    assert torch.equal(gptq.g_idx, rtn.g_idx)


CONFIGS = [
    dict(bits=4, group_size=128),
    dict(bits=3, group_size=64, sym=False),
    dict(bits=2, group_size=32, sym=False, desc_act=True),
    dict(bits=8, group_size=-1, desc_act=True),
    dict(bits=4, group_size=64, desc_act=True, static_groups=True, sym=False),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "options", CONFIGS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())
)
def test_codes_dequantize_exactly_to_the_returned_weight(options, dtype):
    weight, _, hessian = correlated_problem(2)
    weight = weight.to(dtype)
    config = QuantizeConfig(**options)
    result = gptq_quantize(weight, hessian, config)
    q = result.quantized
    maxq = (1 << config.bits) - 1
    groups = 1 if config.group_size == -1 else COLS // config.group_size
    assert q.codes.shape == (COLS, ROWS) and q.codes.dtype == torch.int32
    assert q.zeros.shape == q.scales.shape == (groups, ROWS) and q.zeros.dtype == torch.int32
    assert q.g_idx.shape == (COLS,) and q.g_idx.dtype == torch.int32
    assert int(q.codes.min()) >= 0 and int(q.codes.max()) <= maxq
    assert int(q.zeros.min()) >= 0 and int(q.zeros.max()) <= maxq
    if config.sym:
        assert bool((q.zeros == (maxq + 1) // 2).all())
    assert result.weight.dtype == dtype and result.weight.shape == weight.shape
    # the format formula, written out ...
    g = q.g_idx.long()
    by_hand = ((q.codes - q.zeros[g]).float() * q.scales[g].float()).t().to(dtype)
    assert torch.equal(result.weight, by_hand)
    # ... and through the core's packer and reference dequantize
    tensors = pack(q, checkpoint_format="gptq_v2", scale_dtype=torch.float32)
    unpacked = dequantize(**tensors, bits=config.bits, dtype=dtype)
    assert torch.equal(result.weight, unpacked.t())


def test_act_order_assigns_groups_in_hessian_order():
    weight, _, hessian = correlated_problem(3)
    config = QuantizeConfig(bits=4, group_size=32, desc_act=True)
    g_idx = gptq_quantize(weight, hessian, config).quantized.g_idx.long()
    perm = torch.argsort(hessian.diagonal(), descending=True)
    assert torch.equal(g_idx[perm], torch.arange(COLS) // 32)
    assert torch.equal(torch.bincount(g_idx), torch.full((COLS // 32,), 32))
    assert not torch.equal(g_idx, torch.arange(COLS) // 32)  # the order did change


def test_static_groups_keep_g_idx_and_the_grids_of_the_original_weight():
    weight, x, hessian = correlated_problem(4)
    config = QuantizeConfig(bits=4, group_size=64, desc_act=True, static_groups=True)
    result = gptq_quantize(weight, hessian, config)
    rtn = rtn_quantize(weight, config).quantized
    assert torch.equal(result.quantized.g_idx, torch.arange(COLS, dtype=torch.int32) // 64)
    assert torch.equal(result.quantized.scales, rtn.scales)  # fitted before any update
    assert torch.equal(result.quantized.zeros, rtn.zeros)
    assert output_error(x, weight, result.weight) < 0.85 * output_error(
        x, weight, rtn_quantize(weight, config).weight
    )


@pytest.mark.parametrize("desc_act", [False, True])
def test_loss_is_the_objective_with_the_damped_hessian(desc_act):
    # Every column's total change is Err @ U, and U^T U = (H + damp I)^-1, so
    # sum(err^2) = tr(E (H + damp I) E^T) exactly: the loss is half the objective.
    weight, _, hessian = correlated_problem(5)
    config = QuantizeConfig(bits=3, group_size=64, desc_act=desc_act, sym=False)
    result = gptq_quantize(weight, hessian, config)
    h = hessian.double()
    damped = h + result.damp_percent * h.diagonal().mean() * torch.eye(COLS, dtype=torch.float64)
    error = weight.double() - result.weight.double()
    objective = float(torch.einsum("nk,kl,nl->", error, damped, error)) / 2
    assert result.loss == pytest.approx(objective, rel=1e-3)


@pytest.mark.parametrize("block_size", [1, 7, 32])
def test_group_refits_see_every_earlier_error_whatever_the_block_size(block_size):
    # With block_size=1 every update is applied at once; blocked runs must fit the same grids
    # even where a group starts inside a block (32 | 64) or straddles blocks (7).
    weight, _, hessian = correlated_problem(6)
    config = QuantizeConfig(bits=4, group_size=16, sym=False)
    blocked = gptq_quantize(weight, hessian, config, block_size=128).quantized
    other = gptq_quantize(weight, hessian, config, block_size=block_size).quantized
    torch.testing.assert_close(blocked.scales, other.scales, rtol=1e-4, atol=0)
    assert float((blocked.codes == other.codes).float().mean()) > 0.999


@pytest.mark.parametrize("desc_act", [False, True])
def test_dead_columns_quantize_to_zero(desc_act):
    # Reference behaviour: H[i, i] == 0 -> H[i, i] = 1 and W[:, i] = 0 before quantizing.
    weight, x, _ = correlated_problem(7)
    dead = torch.tensor([0, 5, 100, 255])
    x[:, dead] = 0
    hessian = 2 / TOKENS * x.T @ x
    assert bool((hessian[dead] == 0).all())
    config = QuantizeConfig(bits=4, group_size=64, desc_act=desc_act, sym=False)
    result = gptq_quantize(weight, hessian, config)
    assert bool((result.weight[:, dead] == 0).all())
    assert bool((result.weight.abs().sum(0) > 0).sum() == COLS - len(dead))
    q = result.quantized
    assert torch.equal(q.codes[dead], q.zeros[q.g_idx[dead].long()])
    assert torch.isfinite(torch.tensor(result.loss))
    # the dead inputs never reach the output, so GPTQ still beats RTN there
    rtn = rtn_quantize(weight, config).weight
    assert output_error(x, weight, result.weight) < output_error(x, weight, rtn)


def test_an_all_dead_hessian_gives_a_zero_weight():
    weight, _, _ = correlated_problem(8)
    result = gptq_quantize(weight, torch.zeros(COLS, COLS), QuantizeConfig(bits=4))
    assert bool((result.weight == 0).all()) and result.loss == 0.0


def test_an_indefinite_hessian_raises_the_damping_and_warns(caplog):
    weight, _, _ = correlated_problem(9)
    low_rank = torch.randn(COLS // 2, COLS, generator=torch.Generator().manual_seed(9))
    hessian = 2 / len(low_rank) * low_rank.T @ low_rank  # fewer tokens than inputs: singular
    hessian -= 0.05 * hessian.diagonal().mean() * torch.eye(COLS)  # eigenvalues down to -5%
    config = QuantizeConfig(bits=4, damp_percent=0.01)
    with caplog.at_level(logging.WARNING, logger="ferrule.quant"):
        result = gptq_quantize(weight, hessian, config, name="mlp.up_proj")
    assert result.damp_percent == pytest.approx(0.08)  # 0.01, 0.02, 0.04 fail
    assert torch.isfinite(result.weight).all()
    [record] = caplog.records
    assert "mlp.up_proj" in record.message and "0.01, 0.02, 0.04" in record.message


def test_a_hessian_no_damping_can_fix_raises_naming_the_layer():
    hessian = torch.eye(32)
    hessian[0, 1] = hessian[1, 0] = 10.0  # an eigenvalue of -9 times the mean diagonal
    with pytest.raises(DampingError, match=r"\(64, 32\).*0\.01, 0\.02.*, 1 "):
        gptq_quantize(torch.randn(64, 32), hessian, QuantizeConfig(bits=4, group_size=-1))


@pytest.mark.parametrize(
    ("weight", "hessian", "match"),
    [
        (torch.randn(8, 32), torch.eye(16), r"expected \[32, 32\]"),
        (torch.randn(8, 32), torch.full((32, 32), float("nan")), "NaN or infinite"),
        (torch.randn(8, 32), -torch.eye(32), "negative diagonal"),
        (torch.randn(8, 32, 1), torch.eye(32), "2-D floating weight"),
    ],
)
def test_bad_inputs_are_named(weight, hessian, match):
    with pytest.raises(ValueError, match=match):
        gptq_quantize(weight, hessian, QuantizeConfig(bits=4, group_size=-1))


def test_the_weight_stays_untouched_and_the_device_is_kept():
    weight, _, hessian = correlated_problem(10)
    before, h_before = weight.clone(), hessian.clone()
    result = gptq_quantize(weight, hessian, QuantizeConfig(bits=4, desc_act=True))
    assert torch.equal(weight, before) and torch.equal(hessian, h_before)
    assert result.weight.device == weight.device


def test_stacked_layers_sharing_a_hessian_quantize_as_each_alone():
    """Why the pipeline may stack q, k and v: GPTQ's rows are independent given H."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(512, 64, generator=gen) @ torch.randn(64, 64, generator=gen)
    hessian = 2 * x.t() @ x / x.shape[0]
    first, second = torch.randn(48, 64, generator=gen), torch.randn(16, 64, generator=gen)
    config = QuantizeConfig(bits=3, group_size=32, desc_act=True, sym=False)
    both = gptq_quantize(torch.cat([first, second]), hessian, config)
    alone = [gptq_quantize(w, hessian, config) for w in (first, second)]
    assert torch.equal(both.quantized.codes, torch.cat([a.quantized.codes for a in alone], dim=1))
    assert torch.equal(both.weight, torch.cat([a.weight for a in alone]))
