"""cuda-gptq-mma's CUDA source, run on the CPU against the float64 oracle.

The ``emulator`` fixture (``conftest.py``) builds ``gptq_mma.cu`` unchanged on the host; the
shim emulates ``mma.sync`` per warp from the PTX fragment layouts, so the kernel's fragment
mapping (a thread's packed words are its A fragments, x octets permuted into B fragments),
dequantization, warps sharing columns, split-K and the counter reset are all exercised. The
GPU tests (``test_mma_gpu.py``) run the same cases on hardware.
"""

import pytest
import torch

from ferrule_core.testing.kernels import (
    TOLERANCE,
    float64_reference,
    relative_error,
)


def check(run, layer, x, **plan):
    out, chosen = run(layer, x, **plan)
    err = relative_error(out, float64_reference(layer, x))
    assert err < TOLERANCE["float16"], f"relative error {err:.2e} with plan {chosen}"
    return chosen


# (K, N, group_size, desc_act, sym, rows)
CASES = [
    (256, 128, 128, False, True, 3),  # 8-row tiles, one token row past M masked
    (256, 256, 32, True, False, 16),  # act-order: x gathered through perm
    (512, 96, 128, False, False, 24),  # 32-row tiles; a partial column strip
    (160, 64, -1, True, True, 9),  # K not a whole number of units; 16-row tiles
    (256, 64, 64, False, False, 64),  # 64-row tiles
    (128, 64, 128, False, True, 70),  # two passes of 64 rows
]


@pytest.mark.parametrize(("k", "n", "group_size", "desc_act", "sym", "rows"), CASES)
def test_matches_the_float64_oracle(
    emulated_mma, sorted_layer, k, n, group_size, desc_act, sym, rows
):
    layer = sorted_layer(k, n, group_size, desc_act, sym, seed=k + n)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(1)).half()
    check(emulated_mma, layer, x)


@pytest.mark.parametrize("warps_k", [1, 2, 8])
def test_warps_sharing_columns_and_split_k(emulated_mma, sorted_layer, warps_k):
    layer = sorted_layer(1024, 128, 128, True, False, seed=3)
    x = torch.randn(12, 1024, generator=torch.Generator().manual_seed(2)).half()
    plan = check(emulated_mma, layer, x, warps_k=warps_k, splits=2)
    assert plan[2] == warps_k and plan[3] == 2


@pytest.mark.parametrize(("k", "rows"), [(2304, 16), (1024, 40)])
def test_x_staged_in_several_chunks(emulated_mma, sorted_layer, k, rows):
    """One split over all of K: 2048 rows of x a chunk at 16 rows, 512 at 64 (act-order)."""
    layer = sorted_layer(k, 64, 128, True, False, seed=5)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(4)).half()
    plan = check(emulated_mma, layer, x, warps_k=2, splits=1)
    assert plan[3] == 1


def test_strided_and_large_inputs(emulated_mma, sorted_layer):
    layer = sorted_layer(256, 64, 128, False, False)
    wide = torch.randn(5, 512).half()
    check(emulated_mma, layer, wide[:, ::2])  # no 16-byte loads of x
    x = (torch.randn(4, 256) * 3e3).half()  # products near float16's range, sums in float32
    check(emulated_mma, layer, x)


def test_plan(emulated_mma, sorted_layer):
    layer = sorted_layer(2048, 256, 128, False, False)
    _, plan = emulated_mma(layer, torch.randn(16, 2048).half())
    tokens, loads, warps_k, splits, per_split = plan
    assert (tokens, loads) == (16, 2)
    assert splits * per_split >= 2048 // 32 and per_split % warps_k == 0
    _, plan = emulated_mma(layer, torch.randn(40, 2048).half())
    assert plan[:2] == (64, 1)
