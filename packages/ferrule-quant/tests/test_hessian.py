"""HessianAccumulator against 2/n X^T X computed at once in float64."""

from __future__ import annotations

import pytest
import torch

from ferrule_core import QuantizeConfig
from ferrule_quant.gptq import gptq_quantize
from ferrule_quant.hessian import HessianAccumulator

K = 48


def batches(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(K, K, generator=gen)
    shapes = [(2, 7, K), (1, 33, K), (5, 1, K), (3, 64, K), (0, 5, K)]
    return [(torch.randn(*s, generator=gen) @ mix + 3.0) for s in shapes]


def test_several_batches_equal_the_direct_float64_hessian():
    acc = HessianAccumulator(K)
    xs = batches()
    for x in xs:
        acc.add_batch(x)
    flat = torch.cat([x.reshape(-1, K) for x in xs]).double()
    expected = 2 / len(flat) * flat.T @ flat
    assert acc.nsamples == len(flat) == 14 + 33 + 5 + 192
    assert acc.hessian.dtype == torch.float32 and acc.hessian.shape == (K, K)
    torch.testing.assert_close(
        acc.hessian.double(), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max())
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_low_and_high_precision_inputs_accumulate_in_float32(dtype):
    x = batches(1)[3].to(dtype)
    acc = HessianAccumulator(K)
    acc.add_batch(x)
    flat = x.reshape(-1, K).double()  # the values the inputs hold, exactly
    assert acc.hessian.dtype == torch.float32
    torch.testing.assert_close(
        acc.hessian.double(), 2 / len(flat) * flat.T @ flat, rtol=1e-5, atol=1e-3
    )


def test_one_batch_or_many_give_the_same_gptq_result():
    xs = batches(2)
    whole, parts = HessianAccumulator(K), HessianAccumulator(K)
    whole.add_batch(torch.cat([x.reshape(-1, K) for x in xs]))
    for x in xs:
        parts.add_batch(x)
    weight = torch.randn(32, K)
    config = QuantizeConfig(bits=4, group_size=-1)
    a = gptq_quantize(weight, whole.hessian, config).weight
    b = gptq_quantize(weight, parts.hessian, config).weight
    assert float((a == b).float().mean()) > 0.99


def test_the_hessian_lives_where_the_first_batch_does_unless_told():
    acc = HessianAccumulator(4)
    assert acc.nsamples == 0 and torch.equal(acc.hessian, torch.zeros(4, 4))
    acc.add_batch(torch.ones(3, 4, dtype=torch.float64))
    assert acc.hessian.device == torch.device("cpu")
    assert torch.equal(acc.hessian, torch.full((4, 4), 2.0))
    assert HessianAccumulator(4, device="cpu").hessian.device == torch.device("cpu")


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        (torch.zeros(3, 5), "last dimension must be 4"),
        (torch.zeros(3, 4, dtype=torch.int64), "floating"),
    ],
)
def test_bad_inputs_are_named(inputs, match):
    with pytest.raises(ValueError, match=match):
        HessianAccumulator(4).add_batch(inputs)
    with pytest.raises(ValueError, match="positive integer"):
        HessianAccumulator(0)
