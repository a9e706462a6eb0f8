"""``triton-silu-mul`` against ``F.silu(gate) * up`` in float64, and its refusals.

Where there is no GPU the kernel runs in Triton's interpreter (see conftest.py); on a GPU
the same tests run compiled. ``test_fused_act_gpu.py`` covers Llama-sized rows and graphs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ferrule_core import KernelRequest, load_plugins

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Rounded once to the dtype: a few units in the last place of the output.
TOLERANCE = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
DTYPES = list(TOLERANCE)
DTYPE_IDS = ["float32", "float16", "bfloat16"]


def silu_mul_reference(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.double().cpu().chunk(2, dim=-1)
    return F.silu(gate) * up


def _relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double().cpu() - expected).norm() / expected.norm())


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(("rows", "inter"), [(3, 11), (1, 64), (5, 1500)])
def test_silu_mul_matches_float64(dtype, rows, inter):
    from ferrule_triton_kernels.fused_act import TritonSiluMul

    gen = torch.Generator().manual_seed(rows * inter)
    x = (torch.randn(rows, 2 * inter, generator=gen) * 4).to(DEVICE, dtype)
    out = TritonSiluMul().forward(x)
    assert out.shape == (rows, inter) and out.dtype == dtype and out.device == x.device
    assert _relative(out, silu_mul_reference(x)) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_strided_rows_and_leading_dims(dtype):
    from ferrule_triton_kernels.fused_act import TritonSiluMul

    gen = torch.Generator().manual_seed(7)
    wide = torch.randn(4, 2 * 11 + 5, generator=gen).to(DEVICE, dtype)
    x = wide[:, 3 : 3 + 2 * 11]  # rows 27 apart, not contiguous
    assert not x.is_contiguous() and x.stride(0) == 27
    kernel = TritonSiluMul()
    assert _relative(kernel.forward(x), silu_mul_reference(x)) < TOLERANCE[dtype]
    every_other = torch.randn(6, 2 * 11, generator=gen).to(DEVICE, dtype)[::2]
    assert (
        _relative(kernel.forward(every_other), silu_mul_reference(every_other)) < (TOLERANCE[dtype])
    )
    batched = torch.randn(2, 3, 2 * 11, generator=gen).to(DEVICE, dtype)
    out = kernel.forward(batched)
    assert out.shape == (2, 3, 11)
    assert _relative(out, silu_mul_reference(batched)) < TOLERANCE[dtype]


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # numpy's exp
def test_large_gates_saturate_and_empty_batches_launch_nothing():
    from ferrule_triton_kernels.fused_act import TritonSiluMul

    kernel = TritonSiluMul()
    gate = torch.tensor([[-200.0, -30.0, 0.0, 30.0, 200.0]], device=DEVICE)
    out = kernel.forward(torch.cat([gate, torch.full_like(gate, 2.0)], dim=-1))
    assert torch.isfinite(out).all(), "exp(-gate) overflowing to inf gives silu = -0, not nan"
    torch.testing.assert_close(out.cpu(), (F.silu(gate) * 2).cpu(), rtol=1e-5, atol=0)
    assert kernel.forward(torch.empty(0, 22, device=DEVICE)).shape == (0, 11)


def test_bad_inputs_say_what_is_wrong():
    from ferrule_triton_kernels.fused_act import TritonSiluMul

    kernel = TritonSiluMul()
    with pytest.raises(ValueError, match=r"shape \(3, 7\).*2 \* intermediate_size"):
        kernel.forward(torch.randn(3, 7, device=DEVICE))
    with pytest.raises(ValueError, match=r"torch\.float64; use one of float16"):
        kernel.forward(torch.randn(3, 8, dtype=torch.float64, device=DEVICE))


def _request(activation: str, platform: str = DEVICE) -> KernelRequest:
    return KernelRequest(platform=platform, dtype="float16", activation=activation)


def test_the_spec_accepts_silu_and_refuses_other_activations():
    registry = load_plugins(allow=["triton"])
    spec = registry.select_kernel("activation", _request("silu"))
    assert spec.name == "triton-silu-mul" and spec.plugin == "triton"
    reason = registry.kernel_reasons("activation", _request("gelu"))["triton-silu-mul"]
    assert reason is not None and "fuses only silu(gate) * up" in reason
    assert "not hidden_act='gelu'" in reason
    assert "no activation kernel" not in reason
    assert registry.kernel_reasons("activation", _request(""))["triton-silu-mul"] is not None


def test_the_spec_refuses_cpu_tensors_outside_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    registry = load_plugins(allow=["triton"])
    reason = registry.kernel_reasons("activation", _request("silu", "cpu"))["triton-silu-mul"]
    assert reason is not None and "interpreter" in reason
