"""cuda-gptq-wgmma's CUDA source, run on the CPU against the float64 oracle.

The ``emulator`` fixture (``conftest.py``) builds ``gptq_wgmma.cu`` unchanged on the host; the
shim emulates ``wgmma`` per warpgroup from the PTX fragment layouts and reads its B operand
through the descriptor and the 128-byte swizzle, so the bytes each thread takes from the words
(the fragments' K rows), fragment mapping, swizzled staging, stage ring, split-K and the
counter reset are exercised.
The GPU tests (``test_wgmma_gpu.py``) run the same cases on hardware.
"""

import ctypes

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
    ("tokens", "tiles", "splits", "rows"),
    [
        (16, 2, 3, 20),
        (16, 2, 1, 9),
        (32, 2, 1, 30),
        (64, 2, 1, 20),
        (64, 1, 1, 20),
        (64, 1, 3, 100),
        (64, 2, 16, 20),
        (64, 1, 6, 70),
        (128, 2, 2, 20),
        (128, 1, 2, 130),
        (128, 1, 16, 130),
        (256, 1, 1, 20),
        (256, 1, 3, 300),
    ],
)
def test_forced_tiles_and_split_k(emulated_wgmma, sorted_layer, tokens, tiles, splits, rows):
    """One m64 tile a warpgroup (256-row tiles always, 64- and 128-row tiles by choice): 128
    columns a block, 2 a thread; 416 columns leave a partial block either way. One split of 16
    steps goes round every ring (5 to 10 stages) more than once; 16 splits of one step (two
    units) and 6 of three (six) end the 64-row tiles' loop, which keeps 3 units in flight,
    before and on its round of 6 units; 16 splits of one step end the one-tile 128-row
    loop (4 in flight) before its round of 8."""
    layer = sorted_layer(1024, 416, 128, True, False, seed=3)
    x = torch.randn(rows, 1024, generator=torch.Generator().manual_seed(2)).half()
    plan = check(emulated_wgmma, layer, x, tokens=tokens, splits=splits, tiles=tiles)
    assert (plan[0], plan[4], plan[1]) == (tokens, tiles, splits)


@pytest.mark.parametrize(
    ("tokens", "tiles", "splits", "rows"),
    [
        (16, 2, 2, 9),
        (16, 2, 8, 9),
        (32, 2, 3, 30),
        (64, 2, 4, 20),
        (64, 1, 4, 20),
        (128, 2, 2, 130),
        (128, 1, 3, 130),
        (256, 1, 3, 300),
        (256, 1, 8, 20),
    ],
)
def test_split_k_in_a_cluster(emulated_wgmma, sorted_layer, tokens, tiles, splits, rows):
    """The tile's splits as one thread block cluster, run at once: each block stores the
    8-token groups it does not own into their owners' rings and adds up its own: 2 to 8
    ranks, ranks that own no group (16 rows in 8 splits), float4 sums for 2 tiles a thread and
    for one (256-row tiles, and 64- or 128-row ones by choice), rows past M. The workspace starts as NaN and is not read."""
    layer = sorted_layer(1024, 416, 128, True, False, seed=5)
    x = torch.randn(rows, 1024, generator=torch.Generator().manual_seed(6)).half()
    forced = {"tokens": tokens, "splits": splits, "tiles": tiles}
    plan = check(emulated_wgmma, layer, x, clusters=2, **forced)
    assert (plan[0], plan[4], plan[1], plan[3]) == (tokens, tiles, splits, 1), plan
    planes, plan = emulated_wgmma(layer, x, **forced)
    assert plan[3] == 0
    clustered, _ = emulated_wgmma(layer, x, clusters=2, **forced)
    assert relative_error(clustered, planes.double()) < 1e-3  # float32 sums in another order


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


def planned(emulator, m, k, n, num_sms=66, tokens=0, splits=0, clusters=0, tiles=0):
    """``(tokens, splits, steps_per_split, in_clusters, tiles)`` the kernel plans for an ``[m,
    k] @ [k, n]`` problem on ``num_sms`` emulated multiprocessors of two resident blocks each
    (66: the 132 blocks an H100 or H200 holds at once). Nothing runs, so no tensors are
    needed."""
    plan = (ctypes.c_int * 5)(tokens, splits, clusters << 1, 0, tiles)
    pointers = [None] * 7  # perm, qweight, qzeros, scales, out, workspace, counters
    status = emulator.emulated_wgmma(
        None, 0, 0, *pointers, m, k, n, 128, num_sms, num_sms * 8, plan
    )
    assert status == 0
    return tuple(plan)


def test_plan_up_to_32_rows_takes_one_small_tile_in_splits(emulator):
    tokens, splits, per_split, *_ = planned(emulator, 16, 2048, 256, num_sms=4)
    assert tokens == 16 and splits == 8 and per_split == 4  # 8 resident blocks, 4 steps each
    assert planned(emulator, 17, 2048, 256, num_sms=4)[0] == 32
    assert planned(emulator, 32, 4096, 4096)[:2] == (32, 8)  # 16 column blocks, 128 resident


@pytest.mark.parametrize(
    ("m", "k", "n", "expected"),
    [
        # (tokens, tiles a consumer, splits): the fastest of a sweep of every forced pair on an
        # H200 (ratio to fp16 cuBLAS of the plan before -> the fastest): 4096x6144 at 512 rows
        # one wave of 256-row tiles (0.47x -> 0.85x), 4096x4096 at 512 (0.63x -> 0.72x),
        # 4096x14336 at 128 (0.84x -> 0.91x). One m64 tile a consumer (128 columns a block) at
        # 64-128 rows, from a later sweep: 4096x4096 at 64 / 128 / 256 rows 0.88x / 0.73x /
        # 0.71x -> 0.97x / 0.80x / 0.78x, 14336x4096 at 128 0.90x -> 1.06x (the fastest
        # measured at 128 rows of 4096x4096, (128, 1, 4), 0.86x, is the estimate's second).
        (512, 4096, 6144, (256, 1, 1)),
        (256, 4096, 6144, (256, 1, 2)),
        (64, 4096, 4096, (64, 1, 4)),
        (128, 4096, 4096, (64, 1, 2)),
        (256, 4096, 4096, (128, 1, 2)),
        (512, 4096, 4096, (256, 1, 2)),
        (1024, 4096, 4096, (256, 1, 1)),
        (64, 14336, 4096, (64, 2, 8)),
        (128, 14336, 4096, (128, 1, 4)),
        (512, 14336, 4096, (256, 1, 2)),
        (64, 4096, 14336, (64, 2, 2)),
        (128, 4096, 14336, (128, 2, 2)),
        (64, 28672, 8192, (64, 2, 4)),
        (128, 28672, 8192, (128, 2, 4)),
        (256, 28672, 8192, (256, 1, 2)),
        (1024, 28672, 8192, (256, 1, 1)),
    ],
)
def test_plan_from_33_rows_takes_the_least_estimated_time(emulator, m, k, n, expected):
    tokens, splits, _, _, tiles = planned(emulator, m, k, n, clusters=1)  # the default
    assert (tokens, tiles, splits) == expected


@pytest.mark.parametrize(
    ("m", "k", "n", "expected"),
    [
        # Split-K in clusters where the estimate prefers it, measured on an H200 (ratio to fp16
        # of the workspace's plan -> in clusters): 4096x6144 at 64-256 rows (0.87x -> 1.05x,
        # 0.64x -> 0.82x, 0.71x -> 0.79x), 4096x4096 at 512 (0.75x -> 0.82x), 14336x4096 at
        # 512 (0.86x -> 0.99x), 4096x14336 at 64 / 128 (1.16x -> 1.28x, 0.88x -> 1.03x),
        # 28672x8192 at 256 (1.00x -> 1.19x).
        (64, 4096, 6144, (64, 4, 16, 1)),
        (128, 4096, 6144, (128, 2, 32, 1)),
        (256, 4096, 6144, (256, 2, 32, 1)),
        (512, 4096, 4096, (256, 2, 32, 1)),
        (512, 14336, 4096, (256, 2, 112, 1)),
        (64, 4096, 14336, (64, 2, 32, 1)),
        (128, 4096, 14336, (128, 2, 32, 1)),
        (256, 28672, 8192, (256, 2, 224, 1)),
        # The workspace where clusters would add a wave (120 blocks in clusters of 4 or 8: 128
        # blocks ran 1.02x in clusters against 1.61x at 16 rows of 4096x4096) or cost more (6
        # splits: 4-6% slower at 64 rows), and without a split.
        (16, 4096, 4096, (16, 8, 8, 0)),
        (64, 4096, 4096, (64, 4, 16, 0)),
        (64, 14336, 4096, (64, 8, 28, 0)),
        (64, 28672, 8192, (64, 4, 112, 0)),
        (1024, 4096, 4096, (256, 1, 64, 0)),
    ],
)
def test_plan_finishes_split_k_in_clusters_where_estimated_faster(emulator, m, k, n, expected):
    assert planned(emulator, m, k, n, clusters=1)[:4] == expected
    assert planned(emulator, m, k, n, clusters=0)[3] == 0


def test_plan_keeps_forced_choices(emulator):
    assert planned(emulator, 512, 4096, 6144, tokens=64)[:2] == (64, 1)  # 192 tiles: 1 split
    assert planned(emulator, 512, 4096, 6144, splits=3)[1] == 3
    assert planned(emulator, 100, 2048, 256, num_sms=4, tokens=128, splits=2)[:4] == (128, 2, 16, 0)
    for tokens in (16, 32, 64, 128, 256):  # a forced tile alone: its splits are chosen
        chosen, splits, per_split, *_ = planned(emulator, 300, 2048, 256, num_sms=4, tokens=tokens)
        assert chosen == tokens and splits >= 1 and splits * per_split >= 2048 // 64
    # no tile past the next power of two of M (nor 32-row tiles below it)
    assert planned(emulator, 40, 2048, 256, num_sms=4)[0] in (32, 64)
    # clusters=2: in clusters wherever they fit, even a second wave (4 splits: 120 of 132)
    assert planned(emulator, 64, 28672, 8192, tokens=64, splits=4, clusters=2)[1:4] == (4, 112, 1)
    assert planned(emulator, 64, 28672, 8192, tokens=64, splits=16, clusters=2)[3] == 0
