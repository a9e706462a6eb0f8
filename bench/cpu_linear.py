"""Benchmark ferrule's CPU linear kernels against dense and reference matmuls, in one run.

    python bench/cpu_linear.py [--quick]

For Llama-7B-like layer shapes (in x out: 4096x4096, 4096x11008) at batch 1 (decode) and 16,
it times, on the same inputs and machine:

- ``dense fp32`` / ``dense bf16``: ``torch.nn.functional.linear`` with a float weight;
- ``reference``: ferrule-core's pure-torch kernel (dequantize every call, then matmul);
- ``ours``: ``cpu-int4`` for 4-bit group-128 layers, ``cpu-int8`` for 8-bit per-channel ones,

with bfloat16 activations for the quantized kernels (torch's only vectorized path on x86),
and prints a markdown table of median times and ratios (above 1: ours is faster), then the
CPU and torch version. Each time is a median after warmup, over at least 3 calls and
0.3 s (the slow reference: 3 calls). Runs in about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from ferrule_core import load_plugins
from ferrule_core.quant_linear import QuantLinear

SHAPES = ((4096, 4096), (4096, 11008))  # (in_features, out_features)
BATCHES = (1, 16)
SCHEMES = (("4-bit g128", 4, 128, "cpu-int4"), ("8-bit per-channel", 8, -1, "cpu-int8"))


def median_ms(fn: Callable[[], object], min_time: float = 0.3, min_calls: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds, after one warmup call (two when fast)."""
    start = time.perf_counter()
    fn()
    if time.perf_counter() - start < 0.05:
        fn()
    times: list[float] = []
    while len(times) < min_calls or sum(times) < min_time:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if len(times) >= 200:
            break
    return statistics.median(times) * 1e3


def measure(registry, linear, bits, group_size, kernel):
    """Yield ``(batch, {"fp32", "bf16", "ref", "ours": ms}, relative error)`` per batch size."""
    in_features, out_features = linear.in_features, linear.out_features
    w32 = linear.weight.detach()
    w16 = w32.to(torch.bfloat16)
    ours = QuantLinear.from_linear(
        linear, bits, group_size, dtype=torch.bfloat16, kernel=kernel, registry=registry
    )
    reference = QuantLinear(
        in_features, out_features, bits, group_size, dtype=torch.bfloat16,
        kernel="reference", registry=registry,
    )  # fmt: skip
    reference.load_state_dict(ours.state_dict())
    for batch in BATCHES:
        x32 = torch.randn(batch, in_features)
        x16 = x32.to(torch.bfloat16)
        expected = reference(x16).float()
        got = ours(x16).float()  # builds (repacks) the kernel, outside the timing
        times = {
            "fp32": median_ms(partial(F.linear, x32, w32)),
            "bf16": median_ms(partial(F.linear, x16, w16)),
            "ref": median_ms(partial(reference, x16), min_time=0),
            "ours": median_ms(partial(ours, x16)),
        }
        yield batch, times, float((got - expected).norm() / expected.norm())


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the 4096x4096 shape")
    args = parser.parse_args()
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(threads or 1)
    torch.manual_seed(0)
    registry = load_plugins()
    shapes = SHAPES[:1] if args.quick else SHAPES

    rows = []
    with torch.inference_mode():
        for in_features, out_features in shapes:
            linear = torch.nn.Linear(in_features, out_features, bias=False)
            for label, bits, group_size, kernel in SCHEMES:
                for batch, times, error in measure(registry, linear, bits, group_size, kernel):
                    rows.append((in_features, out_features, batch, label, kernel, times, error))
                    print(f"  measured {in_features}x{out_features} batch {batch} {label}")

    print()
    print(
        "| in x out | batch | scheme | dense fp32 ms | dense bf16 ms | reference ms | ours | "
        "ours ms | fp32 / ours | reference / ours | rel. err vs reference |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for k, n, batch, label, kernel, t, error in rows:
        print(
            f"| {k}x{n} | {batch} | {label} | {t['fp32']:.2f} | {t['bf16']:.2f} | {t['ref']:.1f} | "
            f"{kernel} | {t['ours']:.2f} | {t['fp32'] / t['ours']:.2f}x | "
            f"{t['ref'] / t['ours']:.0f}x | {error:.1e} |"
        )
    print()
    print(
        f"CPU: {cpu_name()} ({threads} threads, {torch.backends.cpu.get_cpu_capability()}); "
        f"torch {torch.__version__}. Quantized kernels take bfloat16 activations; ratios above "
        "1 mean ours is faster."
    )


if __name__ == "__main__":
    main()
