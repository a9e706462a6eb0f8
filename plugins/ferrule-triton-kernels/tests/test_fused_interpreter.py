"""``triton-rmsnorm`` and ``triton-rotary`` against float64 torch formulas.

Where there is no GPU they run in Triton's interpreter (see conftest.py) on small shapes;
on a GPU the same tests run compiled, in half precision too.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = ["float32"] + (["float16", "bfloat16"] if DEVICE == "cuda" else [])
TOLERANCE = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}


def _relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual = actual.double().cpu()
    return float((actual - expected).norm() / expected.norm())


def _rms_reference(x, weight, eps):
    x = x.double().cpu()
    return weight.double().cpu() * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [96, 128])
def test_rms_norm_with_and_without_residual(dtype, cols):
    from ferrule_triton_kernels.fused_norm import TritonRMSNorm

    dtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(cols)
    x = torch.randn(5, cols, generator=gen).to(DEVICE, dtype)
    residual = torch.randn(5, cols, generator=gen).to(DEVICE, dtype)
    layer = SimpleNamespace(
        weight=(1 + torch.rand(cols, generator=gen)).to(DEVICE, dtype), eps=1e-6
    )
    kernel = TritonRMSNorm(layer)
    out = kernel.forward(x)
    assert out.shape == x.shape and out.dtype == dtype
    assert _relative(out, _rms_reference(x, layer.weight, 1e-6)) < TOLERANCE[str(dtype)[6:]]
    out, summed = kernel.forward(x, residual)
    assert torch.equal(summed, x + residual), "the residual sum rounds as torch's add"
    assert _relative(out, _rms_reference(summed, layer.weight, 1e-6)) < TOLERANCE[str(dtype)[6:]]
    assert x.shape == (5, cols) and not torch.equal(summed, x), "inputs are left alone"


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_emits_features_in_output_order(dtype):
    """A folded act-order permutation: the output is norm(x)[:, output_order]."""
    from ferrule_triton_kernels.fused_norm import TritonRMSNorm

    dtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(7)
    cols = 96
    x = torch.randn(4, cols, generator=gen).to(DEVICE, dtype)
    residual = torch.randn(4, cols, generator=gen).to(DEVICE, dtype)
    order = torch.randperm(cols, generator=gen)
    weight = (1 + torch.rand(cols, generator=gen)).to(DEVICE, dtype)
    layer = SimpleNamespace(weight=weight, eps=1e-6, output_order=order.int().to(DEVICE))
    kernel = TritonRMSNorm(layer)
    assert kernel.handles_output_order
    expected = _rms_reference(x, weight, 1e-6)[:, order]
    assert _relative(kernel.forward(x), expected) < TOLERANCE[str(dtype)[6:]]
    out, summed = kernel.forward(x, residual)
    assert torch.equal(summed, x + residual), "the residual sum stays in order"
    expected = _rms_reference(summed, weight, 1e-6)[:, order]
    assert _relative(out, expected) < TOLERANCE[str(dtype)[6:]]


def test_rms_norm_keeps_leading_shape_and_empty_batches():
    from ferrule_triton_kernels.fused_norm import TritonRMSNorm

    layer = SimpleNamespace(weight=torch.ones(64, device=DEVICE), eps=1e-5)
    kernel = TritonRMSNorm(layer)
    x = torch.randn(2, 3, 64, device=DEVICE)
    assert kernel.forward(x).shape == (2, 3, 64)
    assert kernel.forward(torch.empty(0, 64, device=DEVICE)).shape == (0, 64)


def _rotary_layer(head_dim, rotary_dim, neox, positions=64):
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))
    freqs = torch.arange(positions).float()[:, None] * inv_freq[None, :]
    return SimpleNamespace(
        head_dim=head_dim,
        rotary_dim=rotary_dim,
        is_neox_style=neox,
        cos_cache=freqs.cos().to(DEVICE),
        sin_cache=freqs.sin().to(DEVICE),
    )


def _rotary_reference(x, positions, layer):
    t = x.shape[0]
    x = x.double().cpu().reshape(t, -1, layer.head_dim)
    cos = layer.cos_cache.double().cpu()[positions.cpu()][:, None, :]
    sin = layer.sin_cache.double().cpu()[positions.cpu()][:, None, :]
    rot, rest = x[..., : layer.rotary_dim], x[..., layer.rotary_dim :]
    if layer.is_neox_style:
        x1, x2 = rot.chunk(2, dim=-1)
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    return torch.cat((out, rest), dim=-1).reshape(t, -1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("head_dim", "rotary_dim", "neox"),
    [(32, 32, True), (32, 32, False), (32, 16, True), (80, 80, True)],
)
def test_rotary_matches_the_formula_in_place(dtype, head_dim, rotary_dim, neox):
    from ferrule_triton_kernels.fused_rotary import TritonRotary

    dtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(head_dim + rotary_dim)
    layer = _rotary_layer(head_dim, rotary_dim, neox)
    tokens, q_heads, k_heads = 6, 4, 2
    positions = torch.randint(0, 64, (tokens,), generator=gen).to(DEVICE)
    query = torch.randn(tokens, q_heads * head_dim, generator=gen).to(DEVICE, dtype)
    key = torch.randn(tokens, k_heads * head_dim, generator=gen).to(DEVICE, dtype)
    expected_q = _rotary_reference(query, positions, layer)
    expected_k = _rotary_reference(key, positions, layer)
    q_out, k_out = TritonRotary(layer).forward(positions, query, key)
    tolerance = TOLERANCE[str(dtype)[6:]]
    assert _relative(q_out, expected_q) < tolerance
    assert _relative(k_out, expected_k) < tolerance
    assert q_out.data_ptr() == query.data_ptr(), "rotated in place"
    if rotary_dim < head_dim:  # the pass-through features are untouched
        rest = q_out.reshape(tokens, q_heads, head_dim)[..., rotary_dim:]
        assert torch.equal(
            rest.double().cpu(), expected_q.reshape(tokens, q_heads, -1)[..., rotary_dim:]
        )
