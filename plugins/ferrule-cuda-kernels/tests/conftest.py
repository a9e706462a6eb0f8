"""Fixtures of the CUDA kernels' tests: the host emulation of the kernels, random layers, checks
of forced plans and of a CUDA-graph replay.

The emulation (``emulation/cuda_host_shim.h``) is built once a session.

A host C++ compiler builds ``gptq_gemv.cu``, ``gptq_mma.cu`` and ``gptq_wgmma.cu`` unchanged, each in its own
translation unit after the shim, plus the entry points below that do what the torch binding
does before a launch, into a library that the tests call through ctypes. It needs a C++20
compiler and the CUDA headers (no GPU); where either is missing the tests that use it skip.
"""

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from ferrule_core import load_plugins
from ferrule_core.quant_linear import QuantLinear
from ferrule_core.testing.kernels import (
    TOLERANCE,
    float64_reference,
    random_gptq_tensors,
    relative_error,
)
from ferrule_cuda_kernels import extension

SHIM = Path(__file__).with_name("emulation") / "cuda_host_shim.h"
KERNELS = ("gptq_gemv.cu", "gptq_mma.cu", "gptq_wgmma.cu")
ENTRY = """
#include <vector>

#include "gptq_gemv.h"

namespace {
ferrule_gemv::Problem problem(const void* x, int64_t stride_m, int64_t stride_k,
                              const int32_t* perm, const int32_t* qweight, const int32_t* qzeros,
                              const void* scales, void* out, float* workspace, int32_t* counters,
                              int M, int K, int N, int group_size, int bits, int bf16) {
  ferrule_gemv::Problem p{};
  p.x = x; p.x_stride_m = stride_m; p.x_stride_k = stride_k; p.perm = perm;
  p.qweight = qweight; p.qzeros = qzeros; p.scales = scales; p.out = out;
  p.workspace = workspace; p.counters = counters;
  p.M = M; p.K = K; p.N = N; p.group_size = group_size; p.bits = bits; p.bf16 = bf16 != 0;
  return p;
}

// As the binding's gather_first: x[:, p.perm] (without perm, a contiguous copy of x) into
// `gathered` (filled only where `fill`: a plan-only call needs no data), which p then reads
// without perm. False if the gather fails.
bool gather_first(ferrule_gemv::Problem& p, std::vector<uint16_t>& gathered, bool fill,
                  int num_sms) {
  gathered.resize(static_cast<size_t>(p.M) * p.K);
  if (fill && ferrule_gemv::gather_rows(p, gathered.data(), num_sms, nullptr) != cudaSuccess) {
    return false;
  }
  p.x = gathered.data(); p.x_stride_m = p.K; p.x_stride_k = 1; p.perm = nullptr;
  return true;
}
}  // namespace

extern "C" int emulated_gemv(const void* x, int64_t stride_m, int64_t stride_k,
                             const int32_t* perm, const int32_t* qweight, const int32_t* qzeros,
                             const void* scales, void* out, float* workspace, int32_t* counters,
                             int M, int K, int N, int group_size, int bits, int bf16,
                             int num_sms, int64_t capacity, int* plan) {
  auto p = problem(x, stride_m, stride_k, perm, qweight, qzeros, scales, out, workspace,
                   counters, M, K, N, group_size, bits, bf16);
  // As the binding, for act-order rows of long K (before planning: the plan depends on perm).
  std::vector<uint16_t> gathered;
  if (ferrule_gemv::gemv_gathers_first(p) &&
      !gather_first(p, gathered, workspace != nullptr, num_sms)) {
    return 1;
  }
  ferrule_gemv::plan(p, num_sms, capacity);
  plan[0] = p.tile_rows; plan[1] = p.splits; plan[2] = p.units_per_split;
  return workspace == nullptr ? 0 : static_cast<int>(ferrule_gemv::launch(p, nullptr));
}

// Whether the binding gathers x[:, perm] first for cuda-gptq-gemv (gemv_gathers_first), for
// act-order (`perm`) rows of this shape and dtype.
extern "C" int emulated_gemv_gathers_first(int M, int K, int bf16, int perm) {
  static const int32_t index[1] = {0};  // only whether perm is set is read
  auto p = problem(nullptr, K, 1, perm ? index : nullptr, nullptr, nullptr, nullptr, nullptr,
                   nullptr, nullptr, M, K, 64, 128, 4, bf16);
  return ferrule_gemv::gemv_gathers_first(p) ? 1 : 0;
}

// plan: in, warps_k and splits to force (0: choose); out, tokens, loads, warps_k, splits,
// units_per_split.
extern "C" int emulated_mma(const void* x, int64_t stride_m, int64_t stride_k,
                            const int32_t* perm, const int32_t* qweight, const int32_t* qzeros,
                            const void* scales, void* out, float* workspace, int32_t* counters,
                            int M, int K, int N, int group_size, int num_sms, int64_t capacity,
                            int* plan) {
  auto p = problem(x, stride_m, stride_k, perm, qweight, qzeros, scales, out, workspace,
                   counters, M, K, N, group_size, 4, 0);
  p.warps_k = plan[0];
  p.splits = plan[1];
  ferrule_gemv::plan_mma(p, num_sms, capacity);
  plan[0] = p.tokens; plan[1] = p.loads; plan[2] = p.warps_k; plan[3] = p.splits;
  plan[4] = p.units_per_split;
  if (workspace == nullptr) return 0;
  // As the binding: act-order layers gather x through perm first.
  std::vector<uint16_t> gathered;
  if (perm != nullptr && !gather_first(p, gathered, true, num_sms)) return 1;
  return static_cast<int>(ferrule_gemv::launch_mma(p, nullptr));
}

// plan: in, tokens, splits to force (0: choose), flags (bit 0: gather_in_kernel, bits 1-2:
// Problem::clusters), unused, tiles to force; out, tokens, splits, steps_per_split,
// in_clusters, tiles.
extern "C" int emulated_wgmma(const void* x, int64_t stride_m, int64_t stride_k,
                              const int32_t* perm, const int32_t* qweight, const int32_t* qzeros,
                              const void* scales, void* out, float* workspace, int32_t* counters,
                              int M, int K, int N, int group_size, int num_sms, int64_t capacity,
                              int* plan) {
  const bool gather_in_kernel = (plan[2] & 1) != 0;
  auto p = problem(x, stride_m, stride_k, perm, qweight, qzeros, scales, out, workspace,
                   counters, M, K, N, group_size, 4, 0);
  p.has_clusters = true;  // the emulation runs a cluster's blocks at once
  p.clusters = (plan[2] >> 1) & 3;
  p.tokens = plan[0];
  p.splits = plan[1];
  p.tiles = plan[4];
  ferrule_gemv::plan_wgmma(p, num_sms, capacity);
  plan[0] = p.tokens; plan[1] = p.splits; plan[2] = p.units_per_split; plan[3] = p.in_clusters;
  plan[4] = p.tiles;
  if (workspace == nullptr) return 0;
  // As the binding: act-order layers gather x first (or, with gather_in_kernel, in the kernel),
  // and x that TMA cannot read is copied.
  std::vector<uint16_t> gathered;
  if (ferrule_gemv::wgmma_gathers_first(p, gather_in_kernel) &&
      !gather_first(p, gathered, true, num_sms)) {
    return 1;
  }
  return static_cast<int>(ferrule_gemv::launch_wgmma(p, nullptr));
}
"""


def cuda_include() -> Path | None:
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        homes.append(str(Path(nvcc).resolve().parent.parent))
    for home in filter(None, homes):
        include = Path(home) / "include"
        if (include / "cuda_runtime.h").exists() and (include / "cuda_fp16.h").exists():
            return include
    return None


def build_emulator(folder: Path):
    """The kernels built on the host into ``folder``, loaded."""
    compiler = shutil.which("g++") or shutil.which("c++")
    include = cuda_include()
    if compiler is None or include is None:
        pytest.skip("needs a C++ compiler and the CUDA headers")
    units = []
    for name in KERNELS:
        unit = folder / f"{Path(name).stem}_emulated.cpp"
        unit.write_text(f'#include "{SHIM}"\n#include "{extension.CSRC / name}"\n')
        units.append(unit)
    entry = folder / "entry.cpp"
    entry.write_text(f'#include "{SHIM}"\n' + ENTRY)
    library = folder / "libkernels_emulated.so"
    done = subprocess.run(
        [
            compiler,
            "-std=c++20",
            "-O1",
            "-shared",
            "-fPIC",
            "-pthread",
            f"-I{include}",
            f"-I{extension.CSRC}",
            *map(str, units),
            str(entry),
            "-o",
            str(library),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lib = ctypes.CDLL(str(library))
    p, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    lib.emulated_gemv.argtypes = [p, i64, i64, p, p, p, p, p, p, p] + [i32] * 7 + [i64, p]
    lib.emulated_mma.argtypes = [p, i64, i64, p, p, p, p, p, p, p] + [i32] * 5 + [i64, p]
    lib.emulated_wgmma.argtypes = lib.emulated_mma.argtypes
    lib.emulated_gemv_gathers_first.argtypes = [i32] * 4
    return lib


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    return build_emulator(tmp_path_factory.mktemp("emulated_kernels"))


EMULATED_SMS = 4  # two resident blocks each (the shim's occupancy)


def run_emulated(
    entry, layer, x, index, forced, plan_size, splits_at, plan_only=False, workspace_fill=0.0
):
    """``layer(x)`` (float16) by an emulated tensor-core kernel, the way the binding calls it,
    and the kernel's plan (``(None, plan)`` with ``plan_only``: nothing runs).

    ``entry`` is the library's ``emulated_mma`` or ``emulated_wgmma``; ``index`` the int32 [K]
    tensor it gathers ``x`` through (``perm``, or ``None``); ``forced``
    the plan values to force (0: choose); ``plan[splits_at]`` of the ``plan_size`` values it
    returns is the number of splits. The first call only plans, to size the workspace, which
    starts filled with ``workspace_fill``.
    """
    k, n = layer.in_features, layer.out_features
    rows = x.reshape(-1, k)
    group_size = k if layer.group_size == -1 else layer.group_size
    scales = layer.scales.half().contiguous()
    counters = torch.zeros(EMULATED_SMS * 8, dtype=torch.int32)
    out = torch.full((rows.shape[0], n), float("nan"), dtype=torch.float16)

    def call(workspace):
        plan = (ctypes.c_int * plan_size)(*forced)
        status = entry(
            rows.data_ptr(), rows.stride(0), rows.stride(1),
            None if index is None else index.data_ptr(),
            layer.qweight.data_ptr(), layer.qzeros.data_ptr(), scales.data_ptr(),
            out.data_ptr(), workspace, counters.data_ptr(),
            rows.shape[0], k, n, group_size, EMULATED_SMS, counters.numel(), plan,
        )  # fmt: skip
        return status, tuple(plan)

    _, plan = call(None)
    if plan_only:
        return None, plan
    workspace = torch.full((plan[splits_at], rows.shape[0], n), workspace_fill)
    status, plan = call(workspace.data_ptr())
    assert status == 0
    assert not counters.any(), "the last block of each tile resets its counter"
    return out.reshape(*x.shape[:-1], n), plan


@pytest.fixture
def emulated_mma(emulator):
    """``run(layer, x, warps_k=0, splits=0)``: ``(out, plan)`` of the emulated cuda-gptq-mma,
    plan = ``(tokens, loads, warps_k, splits, units_per_split)``."""

    def run(layer, x, warps_k=0, splits=0):
        return run_emulated(
            emulator.emulated_mma, layer, x, layer.input_perm, (warps_k, splits), 5, 3
        )

    return run


@pytest.fixture
def emulated_wgmma(emulator):
    """``run(layer, x, tokens=0, splits=0, plan_only=False, gather_in_kernel=False,
    clusters=0, tiles=0)``: ``(out, plan)`` of the emulated cuda-gptq-wgmma, plan = ``(tokens,
    splits, steps_per_split, in_clusters, tiles)``; ``clusters`` as the kernel's (0 never, 1
    where the plan estimates it faster, 2 wherever it can). With clusters the workspace starts
    as NaN: split-K in a cluster must not read it."""

    def run(
        layer, x, tokens=0, splits=0, plan_only=False, gather_in_kernel=False, clusters=0, tiles=0
    ):
        forced = (tokens, splits, int(gather_in_kernel) | clusters << 1, 0, tiles)
        fill = float("nan") if clusters else 0.0
        return run_emulated(
            emulator.emulated_wgmma, layer, x, layer.input_perm, forced, 5, 1, plan_only, fill
        )

    return run


@pytest.fixture
def graph_replay_errors():
    """``errors(layer, rows)``: capture ``layer`` on a static ``[rows, K]`` float16 input in a
    CUDA graph, replay it on three inputs, and return each output's error against the float64
    oracle (the kernel and its extension are built before the capture)."""

    def errors(layer, rows: int) -> list[float]:
        static = torch.randn(rows, layer.in_features, dtype=torch.float16, device="cuda")
        found = []
        with torch.no_grad():
            layer(static)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                layer(static)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = layer(static)
            for seed in range(3):
                gen = torch.Generator().manual_seed(seed)
                static.copy_(torch.randn(rows, layer.in_features, generator=gen))
                graph.replay()
                torch.cuda.synchronize()
                found.append(relative_error(out, float64_reference(layer, static)))
        return found

    return errors


def _random_layer(k, n, bits, group_size, desc_act, sym, seed, **kwargs) -> QuantLinear:
    gen = torch.Generator().manual_seed(seed)
    tensors = random_gptq_tensors(k, n, bits, group_size, desc_act=desc_act, sym=sym, generator=gen)
    return QuantLinear.from_tensors(tensors, bits, group_size, desc_act=desc_act, sym=sym, **kwargs)


@pytest.fixture
def sorted_layer():
    """``make(k, n, group_size, desc_act, sym, seed=0)``: a random 4-bit layer on the CPU with
    its rows sorted by group, as ``QuantLinear`` sorts them for a ``sorted_groups`` kernel."""

    def make(k, n, group_size, desc_act, sym, seed=0):
        layer = _random_layer(k, n, 4, group_size, desc_act, sym, seed)
        layer.sort_groups()
        return layer

    return make


@pytest.fixture
def kernel_layer():
    """``make(kernel, k, n, group_size, *, bits=4, desc_act=False, sym=True, seed=0)``: a
    random ``QuantLinear`` on the GPU that runs ``kernel``."""

    def make(kernel, k, n, group_size, *, bits=4, desc_act=False, sym=True, seed=0):
        layer = _random_layer(
            k, n, bits, group_size, desc_act, sym, seed, kernel=kernel, registry=load_plugins()
        )
        return layer.to("cuda")

    return make


@pytest.fixture
def forced_plans():
    """``check(layer, row_counts, plans, names)``: for each row count and each plan (values of
    the kernel object's attributes ``names``, e.g. ``warps_k, splits``), two calls on float16
    rows agree with each other (the split-K counters are left at zero) and with the float64
    oracle."""

    def check(layer, row_counts, plans, names):
        gen = torch.Generator().manual_seed(1)
        for rows in row_counts:
            x = torch.randn(rows, layer.in_features, generator=gen).half().cuda()
            expected = float64_reference(layer, x)
            for plan in plans:
                with torch.no_grad():
                    layer(x)  # builds the kernel object on first use
                for name, value in zip(names, plan, strict=True):
                    setattr(layer._kernel, name, value)
                with torch.no_grad():
                    first, second = layer(x), layer(x)
                err = relative_error(first, expected)
                assert err < TOLERANCE["float16"], f"{rows} rows, {plan}: error {err:.2e}"
                assert torch.equal(first, second), "a second call must not see the first's counters"

    return check
