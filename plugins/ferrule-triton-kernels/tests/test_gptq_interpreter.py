"""``triton-gptq`` in Triton's interpreter on CPU tensors: the core's conformance kit, and
the paths the kit's shapes do not reach (split-K slices, every way of finding a row's group,
float16), the configuration table, and the refusals.

float32 and float16 run here. bfloat16 runs in ``test_gptq_gpu.py``: the interpreter's
bfloat16 ``tl.dot`` and int-to-bfloat16 conversion are wrong (Triton 3.6; a plain 16x16
product is off by 1e10), though the M = 1 path, which computes in float32, is right in
bfloat16 here too.
"""

from __future__ import annotations

import os

import pytest
import torch
import triton
import triton.language as tl

from ferrule_core import KernelRequest, load_plugins
from ferrule_core.format import unpack_cols
from ferrule_core.quant_linear import QuantLinear
from ferrule_core.testing import (
    KernelConformance,
    float64_reference,
    random_gptq_tensors,
    relative_error,
)
from ferrule_triton_kernels import checks
from ferrule_triton_kernels.configs import (
    CONFIGS,
    TileConfig,
    configs_for,
    k_per_split,
    smaller,
)
from ferrule_triton_kernels.dequant import _as_float

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="with CUDA, Triton compiles instead (test_gptq_gpu.py): one process runs one way",
)

TOLERANCE = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
ROWS = (1, 10, 90)  # the float32 reduction, split-K with tl.dot, the tiled GEMM


class TestTritonGptqInterpreted(KernelConformance):
    kernel = "triton-gptq"
    device = "cpu"
    dtypes = ("float32",)
    batch_shapes = ((1,), (2, 5), (3, 30))  # M = 1, 10, 90: each program


def _layer(in_features, out_features, bits, group_size, *, g_idx=None, seed=0, **kw):
    gen = torch.Generator().manual_seed(seed)
    tensors = random_gptq_tensors(in_features, out_features, bits, group_size, generator=gen, **kw)
    if g_idx is not None:
        tensors["g_idx"] = g_idx.to(torch.int32)
    return QuantLinear.from_tensors(
        tensors,
        bits,
        group_size,
        desc_act=kw.get("desc_act", False),
        sym=kw.get("sym", True),
        kernel="triton-gptq",
    )


def _kernel(layer, table=None):
    from ferrule_triton_kernels.linear import TritonGptqLinear

    return TritonGptqLinear(layer, table)


def _error(kernel, layer, rows, dtype=torch.float32):
    x = torch.randn(rows, layer.in_features, generator=torch.Generator().manual_seed(rows))
    x = x.to(dtype)
    out = kernel.forward(x)
    assert out.shape == (rows, layer.out_features) and out.dtype == dtype
    expected = float64_reference(layer, x)
    if layer.bias is not None:
        expected = expected - layer.bias.double()
    return relative_error(out, expected)


# --- the programs ---------------------------------------------------------------------


@pytest.mark.parametrize("rows", [17, 40])
def test_split_k_program_over_several_row_tiles(rows):
    """The split-K program with fewer rows a tile than the batch (as CONFIGS' M = 256 entry)."""
    table = {1024: TileConfig("gemv", block_m=16, block_n=64, block_k=32, split_k=2)}
    layer = _layer(128, 96, 4, 32, desc_act=True, sym=False)
    layer.sort_groups()
    assert _error(_kernel(layer, table), layer, rows) < 1e-5


@pytest.mark.parametrize(("bits", "group_size"), [(4, 64), (3, 32), (2, -1), (8, 128)])
def test_split_k_slices_sum_to_the_product(bits, group_size):
    # 256 rows in K blocks of 32 are 8 blocks; 3 slices of 3 blocks, the last one
    # running a block past K. Two N tiles, the second ragged (96 = 64 + 32).
    table = {
        1: TileConfig("gemv", block_m=1, block_n=64, block_k=32, split_k=3),
        64: TileConfig("gemv", block_m=16, block_n=64, block_k=32, split_k=3),
    }
    layer = _layer(256, 96, bits, group_size, desc_act=True, sym=False)
    layer.sort_groups()
    kernel = _kernel(layer, table)
    for rows in (1, 10):
        config = kernel.config(rows)
        assert config.split_k == 3 and k_per_split(config, 256) == 96
        assert _error(kernel, layer, rows) < 1e-5


@pytest.mark.parametrize(
    ("in_features", "group_size", "mode"),
    [
        (256, 128, 0),  # K blocks inside one group: one row of scales per block
        (256, -1, 0),  # one group
        (192, 48, 1),  # 48 is no power of two: the group is computed per row
        (256, 8, 1),  # groups smaller than any K block
    ],
)
def test_uniform_groups_need_no_g_idx(in_features, group_size, mode):
    layer = _layer(in_features, 64, 4, group_size, sym=False)
    kernel = _kernel(layer)
    assert kernel.operands.g_idx is None
    for rows in ROWS:
        assert kernel.operands.group_mode(kernel.config(rows).block_k) == mode
        assert _error(kernel, layer, rows) < 1e-5


@pytest.mark.parametrize("bits", [4, 3])
def test_uneven_groups_read_g_idx_per_row(bits):
    # Sorted but uneven groups (100 and 156 rows): what sort_groups leaves for a layer
    # whose g_idx is no act-order permutation of arange(K) // group_size.
    g_idx = (torch.arange(256) >= 100).to(torch.int32)
    layer = _layer(256, 64, bits, 128, g_idx=g_idx, sym=False)
    kernel = _kernel(layer)
    assert kernel.operands.g_idx is not None
    for rows in ROWS:
        assert kernel.operands.group_mode(kernel.config(rows).block_k) == 2
        assert _error(kernel, layer, rows) < 1e-5


def test_unsorted_g_idx_is_still_right_without_sorting():
    # The programs never assume order when they read g_idx: a layer nobody sorted works.
    g_idx = torch.randint(0, 4, (256,), generator=torch.Generator().manual_seed(5))
    layer = _layer(256, 64, 4, 64, g_idx=g_idx, sym=False)
    kernel = _kernel(layer)
    assert kernel.operands.perm is None and kernel.operands.g_idx is not None
    for rows in ROWS:
        assert _error(kernel, layer, rows) < 1e-5


def test_act_order_gathers_x_and_reads_groups_in_order():
    layer = _layer(256, 64, 4, 32, desc_act=True, sym=False)
    layer.sort_groups()
    kernel = _kernel(layer)
    assert kernel.handles_input_perm
    assert torch.equal(kernel.operands.perm, layer.input_perm)
    assert kernel.operands.g_idx is None  # sorted act-order groups are arange(K) // 32
    for rows in ROWS:
        assert _error(kernel, layer, rows) < 1e-5


@pytest.mark.parametrize(("bits", "group_size"), [(4, 128), (3, 32), (8, -1)])
def test_float16_activations(bits, group_size):
    layer = _layer(256, 96, bits, group_size, desc_act=True, sym=False)
    layer.sort_groups()
    kernel = _kernel(layer)
    for rows in ROWS:
        assert _error(kernel, layer, rows, torch.float16) < TOLERANCE[torch.float16]


def test_bfloat16_at_one_row():
    layer = _layer(256, 64, 4, 128, sym=False)
    assert _error(_kernel(layer), layer, 1, torch.bfloat16) < TOLERANCE[torch.bfloat16]


@triton.jit
def _codes_probe(codes_ptr, out_ptr, BITS: tl.constexpr, DTYPE: tl.constexpr):
    i = tl.arange(0, 256)
    value, BIAS = _as_float(tl.load(codes_ptr + i) & ((1 << BITS) - 1), BITS, DTYPE)
    tl.store(out_ptr + i, value.to(tl.float32) - BIAS)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_codes_become_floats_exactly_without_a_conversion(dtype, bits):
    if dtype == "bfloat16" and bits == 8:
        pytest.skip(
            "8-bit codes convert to bfloat16 (no magic number), which the interpreter gets wrong"
        )
    out = torch.empty(256)
    _codes_probe[(1,)](torch.arange(256, dtype=torch.int32), out, bits, getattr(tl, dtype))
    assert torch.equal(out, (torch.arange(256) % (1 << bits)).float())


def test_zero_points_are_a_constant_on_symmetric_grids():
    symmetric = _kernel(_layer(256, 64, 4, 128)).operands
    assert symmetric.zeros is None and symmetric.zero == 8
    layer = _layer(256, 64, 4, 128, sym=False)
    asymmetric = _kernel(layer).operands
    assert asymmetric.zero == -1 and asymmetric.zeros.dtype == torch.uint8
    assert torch.equal(asymmetric.zeros.int(), unpack_cols(layer.qzeros, 4))


def test_inputs_it_cannot_take():
    layer = _layer(256, 64, 4, 128)
    kernel = _kernel(layer)
    empty = kernel.forward(torch.zeros(0, 256))
    assert empty.shape == (0, 64)
    with pytest.raises(TypeError, match="float64"):
        kernel.forward(torch.zeros(2, 256, dtype=torch.float64))
    with pytest.raises(ValueError, match="last dimension 256"):
        kernel.forward(torch.zeros(2, 128))


def test_selected_through_quant_linear_with_rows_sorted():
    layer = _layer(256, 64, 4, 32, desc_act=True, sym=False)
    x = torch.randn(2, 3, 256)
    out = layer(x)
    assert layer.kernel_spec.name == "triton-gptq" and layer.input_perm is not None
    assert relative_error(out, float64_reference(layer, x)) < 1e-5


# --- the configuration table -----------------------------------------------------------


@pytest.mark.parametrize(("k", "n"), [(4096, 14336), (28672, 8192), (4096, 4096)])
@pytest.mark.parametrize("m", [1, 9, 16, 33, 64, 65, 300, 1024, 5000])
def test_configs_cover_k_without_empty_slices(m, k, n):
    config = configs_for(m, k, n, bits=4, group_size=128)
    assert config.program == ("gemv" if m <= 256 else "gemm")
    assert config.block_m >= (min(m, 128) if config.program == "gemv" else 16)
    assert (config.block_m == 1) == (m == 1)
    assert 128 % config.block_k == 0  # a K block stays inside one group
    per_slice = k_per_split(config, k)
    assert per_slice % config.block_k == 0
    assert per_slice * config.split_k >= k > per_slice * (config.split_k - 1)
    if config.program == "gemm":
        assert config.split_k == 1


def test_small_batches_split_k_to_fill_the_gpu():
    table = {64: TileConfig("gemv", block_m=16, block_n=64, block_k=128, split_k=0)}
    config = configs_for(16, 14336, 4096, sms=132, table=table)  # few column tiles: K splits
    tiles = -(-4096 // config.block_n)
    assert config.split_k > 1 and tiles * config.split_k >= 132
    # enough column tiles: no split
    assert configs_for(16, 4096, 14336 * 2, sms=132, table=table).split_k == 1


@pytest.mark.parametrize(("k", "n"), [(4096, 14336), (28672, 8192)])
@pytest.mark.parametrize("m", [16, 32, 64])
def test_the_tables_small_batch_split_is_kept_as_measured(m, k, n):
    config = configs_for(m, k, n, bits=4, group_size=128)
    assert config.program == "gemv" and config.split_k == CONFIGS[m].split_k == 4
    assert (config.block_m, config.block_n, config.block_k) == (
        CONFIGS[m].block_m,
        CONFIGS[m].block_n,
        CONFIGS[m].block_k,
    )
    # a K too short for four slices gets fewer, none empty
    assert configs_for(m, 2 * config.block_k, n).split_k == 2


def test_k_blocks_stay_short_where_rows_are_gathered_one_by_one():
    # The 16-row entry asks for K blocks of 128.
    assert CONFIGS[16].block_k == 128
    assert configs_for(16, 4096, 4096, group_size=128).block_k == 128
    assert configs_for(16, 4096, 4096, group_size=-1).block_k == 128
    assert configs_for(16, 4096, 4096, group_size=0).block_k == 64  # uneven groups
    assert configs_for(16, 4096, 4096, group_size=48).block_k == 64
    assert configs_for(16, 4096, 4096, bits=3, group_size=128).block_k == 32


def test_configs_shrink_to_small_problems():
    config = configs_for(3, 64, 24, bits=2, group_size=-1)
    assert config.block_k == 64 and config.block_n == 32 and config.block_m == 16
    assert configs_for(1, 64, 24, bits=8, group_size=16).block_k == 16


def test_the_table_serves_every_row_count():
    assert sorted(CONFIGS)[0] == 1
    largest = max(CONFIGS)
    assert configs_for(largest * 10, 4096, 4096).program == CONFIGS[largest].program


def test_tile_config_says_what_is_wrong():
    with pytest.raises(ValueError, match="block_n=48 must be a power of two"):
        TileConfig("gemv", block_m=16, block_n=48, block_k=64)
    with pytest.raises(ValueError, match="only in gemv"):
        TileConfig("gemm", block_m=1, block_n=64, block_k=64)
    with pytest.raises(ValueError, match="program='gemx'"):
        TileConfig("gemx", block_m=16, block_n=64, block_k=64)


def test_smaller_configs_shrink_to_the_smallest_tile():
    config = TileConfig("gemm", block_m=64, block_n=32, block_k=64, num_stages=4)
    seen = [config]
    while (config := smaller(config, bits=2)) is not None:
        seen.append(config)
    assert [c.num_stages for c in seen[:3]] == [4, 3, 2]
    assert seen[-1] == TileConfig("gemm", block_m=16, block_n=16, block_k=16, num_stages=2)
    # a gemm's rows shrink to 64 before its columns (the tensor cores' M side)
    big = TileConfig("gemm", block_m=256, block_n=128, block_k=16, num_stages=2)
    shrunk = [big]
    while (big := smaller(big, bits=4)) is not None:
        shrunk.append(big)
    assert [(c.block_m, c.block_n) for c in shrunk[:5]] == [
        (256, 128),
        (128, 128),
        (64, 128),
        (64, 64),
        (64, 32),
    ]
    assert smaller(TileConfig("gemv", 1, 16, 16, num_stages=2), bits=4) is None


def test_a_config_too_big_for_the_device_is_shrunk_once(monkeypatch):
    from triton.runtime.errors import OutOfResources

    from ferrule_triton_kernels import linear

    launched = []

    def tight_gemv(rows, operands, config):  # a device with room for two stages only
        launched.append(config)
        if config.num_stages > 2:
            raise OutOfResources(100_000, 50_000, "shared memory")
        return real_gemv(rows, operands, config)

    real_gemv = linear.gemv
    monkeypatch.setattr(linear, "gemv", tight_gemv)
    layer = _layer(256, 64, 4, 128)
    table = {64: TileConfig("gemv", block_m=16, block_n=64, block_k=64, num_stages=4)}
    kernel = _kernel(layer, table)
    assert _error(kernel, layer, 5) < 1e-5
    assert [c.num_stages for c in launched] == [4, 3, 2]
    assert _error(kernel, layer, 7) < 1e-5  # remembered: straight to what fits
    assert [c.num_stages for c in launched] == [4, 3, 2, 2]


# --- refusals --------------------------------------------------------------------------


def test_cpu_layers_keep_the_cpu_kernels_without_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    registry = load_plugins()
    request = KernelRequest(
        platform="cpu", bits=4, group_size=128, dtype="bfloat16", in_features=256, out_features=64
    )
    attention = KernelRequest.attention("cpu", "float32", 64)
    assert "Triton's interpreter" in registry.kernel("triton-gptq").reject_reason(request)
    reason = registry.kernel("triton-paged-attention").reject_reason(attention)
    assert "Triton's interpreter" in reason
    assert registry.select_kernel("linear", request).name != "triton-gptq"
    assert registry.select_kernel("attention", attention).name != "triton-paged-attention"


def test_gpu_requests_are_refused_without_triton(monkeypatch):
    monkeypatch.setattr(checks, "triton_problem", lambda: "needs triton>=3.0, not importable")
    request = KernelRequest(platform="cuda", bits=4, group_size=128, dtype="float16")
    assert checks.check_linear(request) == "needs triton>=3.0, not importable"
    assert checks.check_attention(request) == "needs triton>=3.0, not importable"


def test_bfloat16_needs_ampere():
    old = KernelRequest(platform="cuda", dtype="bfloat16", capability=(7, 5))
    assert "compute capability 8.0" in checks.check_platform(old)
    assert checks.check_platform(KernelRequest(platform="cuda", dtype="float16")) is None
    assert checks.triton_problem() is None
    assert os.environ.get("TRITON_INTERPRET") == "1"  # what the conftest promised
