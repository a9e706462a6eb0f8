"""cuda-gptq-gemv's CUDA source, run on the CPU against the float64 oracle.

``emulation/cuda_host_shim.h`` lets a host C++ compiler build ``gptq_gemv.cu`` unchanged (the
``emulator`` fixture of ``conftest.py``): each block's 256 threads run as threads with real
barriers and warp shuffles, so the kernel's indexing, staging, dequantization arithmetic,
split-K reduction and counter reset are all exercised. It needs a C++20 compiler and the CUDA
headers (no GPU); where either is missing the tests skip. The GPU tests (``test_gemv_gpu.py``) run the same cases on
hardware.
"""

import ctypes

import pytest
import torch

from ferrule_core.quant_linear import QuantLinear
from ferrule_core.testing.kernels import (
    TOLERANCE,
    float64_reference,
    random_gptq_tensors,
    relative_error,
)

NUM_SMS = 4  # with 2 resident blocks each: small layers already split K


def run(lib, layer: QuantLinear, x: torch.Tensor, dtype: torch.dtype):
    """``layer(x)`` by the emulated kernel, the way the binding calls it; and its plan."""
    k, n = layer.in_features, layer.out_features
    rows = x.reshape(-1, k)
    group_size = k if layer.group_size == -1 else layer.group_size
    scales = layer.scales.to(dtype).contiguous()
    counters = torch.zeros(NUM_SMS * 8, dtype=torch.int32)
    out = torch.empty(rows.shape[0], n, dtype=dtype)
    plan = (ctypes.c_int * 3)()

    def call(workspace):
        return lib.emulated_gemv(
            rows.data_ptr(), rows.stride(0), rows.stride(1),
            None if layer.input_perm is None else layer.input_perm.data_ptr(),
            layer.qweight.data_ptr(), layer.qzeros.data_ptr(), scales.data_ptr(),
            out.data_ptr(), workspace, counters.data_ptr(),
            rows.shape[0], k, n, group_size, layer.bits, int(dtype == torch.bfloat16),
            NUM_SMS, counters.numel(), plan,
        )  # fmt: skip

    call(None)  # plan only
    workspace = torch.zeros(plan[1], rows.shape[0], n)
    assert call(workspace.data_ptr()) == 0
    assert not counters.any(), "the last block of each tile resets its counter"
    return out.reshape(*x.shape[:-1], n), tuple(plan)


def sorted_layer(k, n, bits, group_size, desc_act, sym, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tensors = random_gptq_tensors(k, n, bits, group_size, desc_act=desc_act, sym=sym, generator=gen)
    layer = QuantLinear.from_tensors(tensors, bits, group_size, desc_act=desc_act, sym=sym)
    layer.sort_groups()  # as QuantLinear does for a sorted_groups kernel
    return layer


# (K, N, bits, group_size, desc_act, sym, batch)
CASES = [
    (256, 64, 4, 128, False, True, (1,)),
    (256, 64, 4, 32, True, False, (3,)),
    (160, 96, 4, 128, True, False, (2, 4)),  # short last group
    (160, 96, 4, -1, False, False, (1,)),
    (256, 64, 8, 32, True, False, (5,)),
    (160, 96, 8, -1, True, True, (9,)),  # two row tiles
    (2048, 256, 4, 128, True, False, (1,)),  # split-K
    (2048, 256, 8, 64, False, False, (3,)),
    (1032, 136, 4, -1, False, True, (2,)),  # a partial unit of rows, a partial column tile
    (1024, 264, 4, 256, True, True, (17,)),  # three row tiles
    # 8 tiles fill the 8 resident blocks, so K is not split and x is staged in several chunks
    # (8192 / rows-per-tile rows each): 2 chunks of 1024 rows at 8 rows a tile, and 8192 + 256
    # rows at one row.
    (2048, 512, 4, 128, True, False, (9,)),
    (8448, 1024, 4, 128, False, False, (1,)),
    # One row of 4-bit codes (each warp a run of consecutive units, unpredicated loads): groups
    # of 64 (2 units) in a partial column tile, act-order; 8 column tiles without a split (8
    # units a warp: runs over two groups of 128).
    (1056, 136, 4, 64, True, False, (1,)),
    (2048, 1024, 4, 128, False, True, (1,)),
]


@pytest.mark.parametrize(("k", "n", "bits", "group_size", "desc_act", "sym", "batch"), CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_matches_the_float64_oracle(emulator, k, n, bits, group_size, desc_act, sym, batch, dtype):
    layer = sorted_layer(k, n, bits, group_size, desc_act, sym, seed=k + n)
    x = torch.randn(*batch, k, generator=torch.Generator().manual_seed(1)).to(dtype)
    out, _ = run(emulator, layer, x, dtype)
    err = relative_error(out, float64_reference(layer, x))
    assert err < TOLERANCE[str(dtype).removeprefix("torch.")], f"relative error {err:.2e}"


def test_split_k_and_row_tiles_are_planned(emulator):
    layer = sorted_layer(2048, 256, 4, 128, True, False)
    _, plan = run(emulator, layer, torch.randn(1, 2048).half(), torch.float16)
    assert plan == (1, 4, 16)  # 8 resident blocks over 2 column tiles: K in 4 splits of 16 units
    _, plan = run(emulator, layer, torch.randn(17, 2048).half(), torch.float16)
    assert plan[0] == 8
    # 8 column tiles fill the GPU: no split, so 264 units (8448 rows) are staged in 2 chunks
    long = sorted_layer(8448, 1024, 4, 128, False, False)
    _, plan = run(emulator, long, torch.randn(1, 8448).half(), torch.float16)
    assert plan == (1, 1, 264)


@pytest.mark.parametrize(("k", "stride"), [(1024, 1), (1024, 2), (9216, 1)])
def test_act_order_row_gathered_from_shared_memory(emulator, k, stride):
    """One float16 row under act-order: x is copied whole to shared memory and gathered there
    (16-byte loads when contiguous, else one by one), up to a longer row."""
    layer = sorted_layer(k, 128, 4, 128, True, False, seed=7)
    wide = torch.randn(1, k * stride, generator=torch.Generator().manual_seed(3)).half()
    x = wide[:, ::stride]
    out, _ = run(emulator, layer, x, torch.float16)
    assert relative_error(out, float64_reference(layer, x)) < TOLERANCE["float16"]


@pytest.mark.parametrize("rows", [1, 2])
def test_act_order_rows_of_long_k_are_gathered_first(emulator, rows):
    """Float16 act-order rows are gathered once (gather_rows), one row from K = 16,384 and two
    at any K, and the kernel reads them in order, as the binding does; bfloat16 keeps the
    kernel's own gather."""
    layer = sorted_layer(16384, 64, 4, 128, True, False, seed=11)
    x = torch.randn(rows, 16384, generator=torch.Generator().manual_seed(4))
    for dtype in (torch.float16, torch.bfloat16):
        out, _ = run(emulator, layer, x.to(dtype), dtype)
        err = relative_error(out, float64_reference(layer, x.to(dtype)))
        assert err < TOLERANCE[str(dtype).removeprefix("torch.")], f"{dtype}: {err:.2e}"


@pytest.mark.parametrize(
    ("rows", "k", "bf16", "perm", "expected"),
    [
        (1, 4096, 0, 1, False),  # one row gathers in the kernel (first: up to 10% slower, H200)
        (1, 16384, 0, 1, True),  # ... but not from K = 16,384, where every block would copy x
        (2, 4096, 0, 1, True),  # two rows at any K (H200: 4096x14336 1.97x of fp16, not 1.87x)
        (8, 1024, 0, 1, True),
        (2, 4096, 1, 1, False),  # bfloat16 keeps the kernel's own gather
        (2, 4100, 0, 1, False),  # K not a multiple of 8: the kernel's own gather
        (2, 4096, 0, 0, False),  # in order: nothing to gather
    ],
)
def test_which_act_order_rows_are_gathered_first(emulator, rows, k, bf16, perm, expected):
    """The binding's rule for cuda-gptq-gemv (gemv_gathers_first), as measured."""
    assert bool(emulator.emulated_gemv_gathers_first(rows, k, bf16, perm)) == expected


def test_strided_input_and_extreme_magnitudes(emulator):
    layer = sorted_layer(256, 64, 4, 128, False, False)
    wide = torch.randn(5, 512).half()
    out, _ = run(emulator, layer, wide[:, ::2], torch.float16)
    assert relative_error(out, float64_reference(layer, wide[:, ::2])) < TOLERANCE["float16"]
    for scale in (1e-4, 3e4):
        x = (torch.randn(2, 256) * scale).to(torch.bfloat16)
        out, _ = run(emulator, layer, x, torch.bfloat16)
        assert relative_error(out, float64_reference(layer, x)) < TOLERANCE["bfloat16"]
    # float16 takes the half2 path: its sums are scaled by 2^e from the largest |x|
    for scale in (1e-3, 1e4):
        x = (torch.randn(2, 256) * scale).clamp(-65000, 65000)
        x[:, 3] = 60000.0 if scale > 1 else x[:, 3]
        out, _ = run(emulator, layer, x.half(), torch.float16)
        assert relative_error(out, float64_reference(layer, x.half())) < TOLERANCE["float16"]
