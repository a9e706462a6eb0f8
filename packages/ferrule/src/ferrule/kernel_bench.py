"""``ferrule bench kernels``: W4A16 GPTQ matmuls against fp16 cuBLAS and torch's int4 kernel.

For each weight shape ``K x N`` (input x output features) and each row count ``M`` it times,
in one run on one GPU:

- ``fp16``: ``torch.matmul`` of float16 ``[M, K] @ [K, N]`` (cuBLAS), the baseline;
- ``torch-int4``: torch's ``_weight_int4pack_mm`` (bfloat16 activations), when installed as a
  ferrule kernel (``ferrule-cuda-kernels``);
- ``ours``: a ``QuantLinear`` (4-bit, group size 128) with the kernel ferrule selects for
  that ``M``, and the same layer with act-order (``desc_act``) rows;
- each named kernel given with ``--kernel``, forced.

Every timing is the median over CUDA-graph replays of a chain of calls that rotates over
enough copies of the weights to overflow the L2 cache, so launch gaps and cache hits stay out
of the numbers. For each ``M`` every candidate is timed twice, the second pass in reverse
order (fp16, ours, ..., ..., ours, fp16), and the two are averaged (:func:`balanced_times`).
Ratios are fp16 time over the kernel's time (above 1: faster than fp16); GB/s counts the
bytes a call must move (weights, scales, zeros, activations, output).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

SHAPES = ((4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192))
ROWS = (1, 4, 16, 64, 256, 1024)
GROUP_SIZE = 128
CACHE_BYTES = 256 << 20  # rotate over at least this many bytes of weights (L2 is 50-60 MB)
MAX_COPIES = 16
CALLS_PER_GRAPH = 16


@dataclass
class KernelTime:
    k: int
    n: int
    m: int
    name: str
    kernel: str
    microseconds: float
    bytes_moved: int
    ratio_vs_fp16: float = float("nan")

    @property
    def gb_per_s(self) -> float:
        return self.bytes_moved / self.microseconds / 1e3


def time_calls(calls: list[Any], repeats: int = 20) -> float:
    """Median microseconds of one call, over graph replays of ``calls`` run in turn."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:  # warm up: selection, compilation, autotuning
            call()
    torch.cuda.current_stream().wait_stream(stream)
    chain = [calls[i % len(calls)] for i in range(max(CALLS_PER_GRAPH, len(calls)))]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in chain:
            call()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(chain))
    times.sort()
    return times[len(times) // 2]


def balanced_times(timers: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Each timer's mean over two passes, the second in reverse order (A B C C B A).

    A drift of the GPU's clock over the passes (a card heated by cuBLAS's fp16 burst slows
    down for a while) then cancels to first order instead of favouring whatever runs
    first. A timer that raises in the first pass is reported and left out.
    """
    first: dict[str, float] = {}
    for name, timer in timers.items():
        try:
            first[name] = timer()
        except Exception as exc:
            print(f"  {name}: {type(exc).__name__}: {exc}")
    return {name: (first[name] + timers[name]()) / 2 for name in reversed(first)}


def _copies(bytes_each: int) -> int:
    return max(1, min(MAX_COPIES, -(-CACHE_BYTES // max(bytes_each, 1))))


def _quant_layers(k: int, n: int, copies: int, *, desc_act: bool, kernel: str | None):
    """``copies`` 4-bit layers of random GPTQ tensors, drawn on the GPU (fast at any size)."""
    import torch

    from ferrule_core import QuantLinear
    from ferrule_engine.dummy_weights import fill_random_gptq

    gen = torch.Generator(device="cuda").manual_seed(0)
    layers = []
    for _ in range(copies):
        layer = QuantLinear(k, n, 4, GROUP_SIZE, desc_act=desc_act, device="cuda", kernel=kernel)
        fill_random_gptq(layer, gen)
        layers.append(layer)
    return layers


def _w4_bytes(k: int, n: int, m: int) -> int:
    groups = -(-k // GROUP_SIZE)
    return k * n // 2 + groups * n * 2 + groups * n // 2 + m * k * 2 + m * n * 2


def _time_layers(layers: list[Any], x: Any) -> float:
    import torch

    with torch.inference_mode():
        return time_calls([lambda layer=layer: layer(x) for layer in layers])


def bench_shape(
    k: int, n: int, rows: tuple[int, ...], kernels: tuple[str, ...]
) -> list[KernelTime]:
    """Every timing of one weight shape."""
    import torch

    results: list[KernelTime] = []
    fp16_bytes = k * n * 2
    weights = [
        torch.randn(k, n, device="cuda", dtype=torch.float16) * 0.02
        for _ in range(_copies(fp16_bytes))
    ]
    w4 = _copies(_w4_bytes(k, n, 1))
    candidates: list[tuple[str, str | None, bool, torch.dtype]] = [
        ("ours", None, False, torch.float16),
        ("ours act-order", None, True, torch.float16),
        ("torch-int4", "torch-int4", False, torch.bfloat16),
    ] + [(name, name, False, torch.float16) for name in kernels]
    layer_sets = {}
    for label, kernel, desc_act, _ in candidates:
        try:
            layer_sets[label] = _quant_layers(k, n, w4, desc_act=desc_act, kernel=kernel)
        except Exception as exc:
            layer_sets[label] = exc
    for m in rows:
        x16 = torch.randn(m, k, device="cuda", dtype=torch.float16)
        timers = {
            "fp16": lambda x=x16: time_calls([lambda w=w: torch.matmul(x, w) for w in weights])
        }
        kernel_names = {}
        for label, _kernel, _desc_act, dtype in candidates:
            layers = layer_sets[label]
            if isinstance(layers, Exception):
                continue
            x = x16.to(dtype)
            try:
                with torch.inference_mode():
                    layers[0](x)
            except Exception as exc:
                print(f"  {label} at {k}x{n} M={m}: {type(exc).__name__}: {exc}")
                continue
            kernel_names[label] = layers[0].kernel_spec.name
            timers[label] = lambda layers=layers, x=x: _time_layers(layers, x)
        times = balanced_times(timers)
        base = times["fp16"]
        results.append(
            KernelTime(k, n, m, "fp16", "cuBLAS", base, fp16_bytes + 2 * (m * k + m * n))
        )
        results[-1].ratio_vs_fp16 = 1.0
        for label, _kernel, _desc_act, _dtype in candidates:
            if label not in times:
                continue
            row = KernelTime(k, n, m, label, kernel_names[label], times[label], _w4_bytes(k, n, m))
            row.ratio_vs_fp16 = base / times[label]
            results.append(row)
    return results


def run(
    shapes: tuple[tuple[int, int], ...] = SHAPES,
    rows: tuple[int, ...] = ROWS,
    kernels: tuple[str, ...] = (),
    progress: bool = False,
) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("ferrule: error: bench kernels needs a CUDA GPU; none is visible")
    results = []
    for k, n in shapes:
        rows_of_shape = bench_shape(k, n, rows, kernels)
        results.extend(rows_of_shape)
        if progress:
            for r in rows_of_shape:
                print(
                    f"  {k}x{n} M={r.m} {r.name} [{r.kernel}]: {r.microseconds:.1f} us, "
                    f"{r.ratio_vs_fp16:.2f}x fp16, {r.gb_per_s:.0f} GB/s",
                    flush=True,
                )
    return {
        "gpu": torch.cuda.get_device_name(),
        "group_size": GROUP_SIZE,
        "results": [asdict(r) | {"gb_per_s": r.gb_per_s} for r in results],
    }


def format_table(report: dict[str, Any]) -> str:
    rows = report["results"]
    labels = list(dict.fromkeys(r["name"] for r in rows if r["name"] != "fp16"))
    header = f"{'K x N':>12} {'M':>5} {'fp16 us':>9}"
    for label in labels:
        header += f" {label + ' x':>16}"
    lines = [header]
    by_case: dict[tuple[int, int, int], dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_case.setdefault((r["k"], r["n"], r["m"]), {})[r["name"]] = r
    kernels_used: dict[str, set[str]] = {}
    for (k, n, m), case in by_case.items():
        line = f"{f'{k}x{n}':>12} {m:>5} {case['fp16']['microseconds']:>9.1f}"
        for label in labels:
            r = case.get(label)
            if r is None:
                line += f" {'-':>16}"
                continue
            kernels_used.setdefault(label, set()).add(r["kernel"])
            cell = f"{r['ratio_vs_fp16']:.2f} ({r['gb_per_s']:.0f}GB/s)"
            line += f" {cell:>16}"
        lines.append(line)
    lines.append(
        "ratio = fp16 time / kernel time; W4 g128; kernels: "
        + "; ".join(f"{label}: {', '.join(sorted(v))}" for label, v in kernels_used.items())
    )
    lines.append(f"GPU: {report['gpu']}")
    return "\n".join(lines)
