"""RTN: the core's round-to-nearest, in the LayerResult form GPTQ returns."""

from __future__ import annotations

import pytest
import torch

from ferrule_core import FormatError, QuantizeConfig
from ferrule_core.format.grid import pack, quantize_rtn
from ferrule_quant.rtn import rtn_quantize


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize(("bits", "group_size"), [(4, 128), (3, 64), (8, -1), (2, 32)])
def test_rtn_matches_the_cores_round_to_nearest(bits, group_size, sym):
    weight = torch.randn(64, 256, generator=torch.Generator().manual_seed(bits)) * 0.03
    result = rtn_quantize(weight, QuantizeConfig(bits=bits, group_size=group_size, sym=sym))
    core = quantize_rtn(weight, bits, group_size, sym)
    q = result.quantized
    assert torch.equal(q.codes, core.codes) and torch.equal(q.zeros, core.zeros)
    assert torch.equal(q.scales, core.scales) and torch.equal(q.g_idx, core.g_idx)
    assert result.damp_percent == 0.0
    g = q.g_idx.long()
    by_hand = ((q.codes - q.zeros[g]).float() * q.scales[g]).t()
    assert torch.equal(result.weight, by_hand)
    assert result.loss == pytest.approx(float((weight.double() - by_hand.double()).square().sum()))


def test_act_order_changes_nothing_without_a_hessian():
    weight = torch.randn(32, 128)
    plain = rtn_quantize(weight, QuantizeConfig(bits=4, group_size=32))
    ordered = rtn_quantize(weight, QuantizeConfig(bits=4, group_size=32, desc_act=True))
    assert torch.equal(plain.weight, ordered.weight)
    assert torch.equal(ordered.quantized.g_idx, torch.arange(128, dtype=torch.int32) // 32)


def test_mse_lowers_the_squared_error_on_heavy_tails():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 256, generator=gen).pow(3) * 0.01  # heavy tails
    config = QuantizeConfig(bits=3, group_size=128, sym=False)
    assert rtn_quantize(weight, config, mse=True).loss < rtn_quantize(weight, config).loss


def test_dtype_and_scale_dtype():
    weight = torch.randn(32, 64).to(torch.bfloat16)
    result = rtn_quantize(weight, QuantizeConfig(bits=4, group_size=32), scale_dtype=torch.float16)
    assert result.weight.dtype == torch.bfloat16
    scales = result.quantized.scales
    assert torch.equal(scales.half().float(), scales)


def test_non_negative_asymmetric_groups_keep_zero_points_v1_can_store():
    weight = torch.rand(32, 64) + 0.01  # every group >= 0: the plain grid's zero point is 0
    v2 = rtn_quantize(
        weight, QuantizeConfig(bits=4, group_size=32, sym=False, checkpoint_format="gptq_v2")
    )
    assert bool((v2.quantized.zeros == 0).all())
    pack(v2.quantized, checkpoint_format="gptq_v2")
    with pytest.raises(FormatError, match="gptq_v2"):
        pack(v2.quantized, checkpoint_format="gptq")
    # v1 (the default format): zero points stay >= 1, the scale widens, nothing is clipped
    v1 = rtn_quantize(weight, QuantizeConfig(bits=4, group_size=32, sym=False))
    assert bool((v1.quantized.zeros == 1).all())
    pack(v1.quantized, checkpoint_format="gptq")
    step = v1.quantized.scales.repeat_interleave(32, dim=0).t()
    assert bool(((v1.weight - weight).abs() <= step / 2 + 1e-6).all())
