"""cuda-gptq-wgmma's CUDA source, run on the CPU against the float64 oracle.

The ``emulator`` fixture (``conftest.py``) builds ``gptq_wgmma.cu`` unchanged on the host; the
shim emulates ``wgmma`` per warpgroup from the PTX fragment layouts and reads its B operand
through the descriptor and the 128-byte swizzle, so the bytes each thread takes from the words
(the fragments' K rows), fragment mapping, swizzled staging, stage ring, split-K and the
counter reset are exercised.
The GPU tests (``test_wgmma_gpu.py``) run the same cases on hardware.
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
    (256, 256, 128, False, True, 16),  # 16-row tiles
    (256, 160, 64, True, False, 24),  # act-order; 32-row tiles; a partial block and warp
    (512, 128, -1, True, True, 40),  # one group; 64-row tiles
    (128, 64, 128, False, False, 130),  # two 128-row tiles, rows past M
    (384, 256, 128, False, False, 9),  # six steps in one block: the 16-row ring's size
    (320, 128, 64, True, False, 12),  # an odd number of steps (the sums path's last step)
]


@pytest.mark.parametrize(("k", "n", "group_size", "desc_act", "sym", "rows"), CASES)
def test_matches_the_float64_oracle(
    emulated_wgmma, sorted_layer, k, n, group_size, desc_act, sym, rows
):
    layer = sorted_layer(k, n, group_size, desc_act, sym, seed=k + n)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(1)).half()
    check(emulated_wgmma, layer, x)


@pytest.mark.parametrize(
    ("tokens", "splits", "rows"),
    [(16, 3, 20), (16, 1, 9), (32, 1, 30), (64, 1, 20), (128, 2, 20), (256, 1, 20), (256, 3, 300)],
)
def test_forced_tiles_and_split_k(emulated_wgmma, sorted_layer, tokens, splits, rows):
    """256-row tiles take one m64 tile a warpgroup: 128 columns a block, 2 a thread. One split
    of 16 steps goes round every ring (6 to 10 stages) more than once."""
    layer = sorted_layer(1024, 416, 128, True, False, seed=3)
    x = torch.randn(rows, 1024, generator=torch.Generator().manual_seed(2)).half()
    plan = check(emulated_wgmma, layer, x, tokens=tokens, splits=splits)
    assert plan[0] == tokens and plan[1] == splits


@pytest.mark.parametrize(
    ("rows", "tokens", "splits"),
    [(1, 0, 0), (3, 0, 1), (4, 16, 2), (4, 32, 1), (2, 64, 3), (5, 0, 0)],
)
def test_gather_in_kernel(emulated_wgmma, sorted_layer, rows, tokens, splits):
    """Act-order rows up to 4 gathered by the producer warps (the tile's rows past M zeroed,
    rings of 6 to 10 stages gone round: 20 steps); 5 rows gather first as ever."""
    layer = sorted_layer(1280, 160, 128, True, False, seed=rows)
    wide = torch.randn(rows, 2 * 1280, generator=torch.Generator().manual_seed(rows)).half()
    for x in (wide[:, :1280].contiguous(), wide[:, ::2]):  # x of any strides
        plan = check(emulated_wgmma, layer, x, tokens=tokens, splits=splits, gather_in_kernel=True)
        assert tokens == 0 or plan[0] == tokens


def test_strided_and_large_inputs(emulated_wgmma, sorted_layer):
    layer = sorted_layer(256, 128, 128, False, False)
    wide = torch.randn(17, 512).half()
    check(emulated_wgmma, layer, wide[:, ::2])  # copied first: the gather reads any strides
    check(emulated_wgmma, layer, wide[:, :256])  # rows 1 KB apart: read as they are
    check(emulated_wgmma, layer, wide[:, 1:257])  # not 16-byte aligned: copied first
    x = (torch.randn(12, 256) * 3e3).half()  # products near float16's range, sums in float32
    check(emulated_wgmma, layer, x)


def test_plan(emulated_wgmma, sorted_layer):
    layer = sorted_layer(2048, 256, 128, False, False)
    _, plan = emulated_wgmma(layer, torch.randn(16, 2048).half())
    tokens, splits, per_split = plan
    assert tokens == 16
    assert splits * per_split >= 2048 // 64 and per_split >= 4  # at least 4 steps a split
    _, plan = emulated_wgmma(layer, torch.randn(100, 2048).half())
    # One column block: larger tiles would leave the GPU idle, and 64-row tiles fill it only
    # in splits of 8 steps, 32-row tiles in splits of 16 (fewer partial sums).
    assert plan == (32, 2, 16)
    _, plan = emulated_wgmma(layer, torch.randn(100, 4096).half()[:, :2048])
    assert plan == (32, 2, 16)  # rows further apart than K: the same plan
    long_k = sorted_layer(4096, 256, 128, False, False)
    _, plan = emulated_wgmma(long_k, torch.randn(100, 4096).half(), plan_only=True)
    assert plan == (64, 4, 16)  # 64-row tiles fill the GPU in splits of 16 steps
    # The emulation's 4 multiprocessors: tiles of 128 rows once they alone cover 3 of them, 256
    # rows (128 columns a block) past 128 rows likewise.
    wide = sorted_layer(128, 3 * 256, -1, False, True)
    _, plan = emulated_wgmma(wide, torch.randn(128, 128).half())
    assert plan[0] == 128
    _, plan = emulated_wgmma(wide, torch.randn(129, 128).half())
    assert plan[0] == 256  # 6 tiles of 256 rows
    _, plan = emulated_wgmma(wide, torch.randn(64, 128).half())
    assert plan[0] == 32  # no tile past the next power of two; 2 steps: twice the blocks in 32


def test_plan_on_long_k_takes_larger_tiles_in_splits(emulated_wgmma, sorted_layer):
    # One column block: on K of 8,192+, 256-row tiles once their splits of 32+ steps could
    # cover 3 of the emulation's 4 multiprocessors (4 such splits of 128 steps); then split as
    # ever, here over all 8 resident blocks. On shorter K the 64-row tiles stay, as split-K's
    # partials would cost more than the larger tile saves.
    x = torch.randn(200, 8192).half()
    _, plan = emulated_wgmma(sorted_layer(8192, 128, 128, False, False), x, plan_only=True)
    assert plan == (256, 8, 16)
    _, plan = emulated_wgmma(
        sorted_layer(4096, 128, 128, False, False), x[:, :4096], plan_only=True
    )
    assert plan[0] == 64
