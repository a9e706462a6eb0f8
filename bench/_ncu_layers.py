"""Run W4 layers (and their fp16 matmuls) once each inside a profiler range, for Nsight Compute.

    ncu --clock-control none --profile-from-start off --nvtx \
        --section SpeedOfLight --section WarpStateStats --section Occupancy \
        python bench/_ncu_layers.py cuda-gptq-gemv:4096x14336:1 cuda-gptq-wgmma:28672x8192:16

Each ``KERNEL:KxN:ROWS`` builds one layer of random GPTQ weights (group size 128, in order;
``KERNEL:KxN:ROWS:act`` for act-order) and an fp16 weight of the same shape, calls both a few
times outside the range (builds, plans, warms caches), then once each between
``cudaProfilerStart`` and ``cudaProfilerStop`` under an NVTX range named ``KxN_M<rows>``, so
``--profile-from-start off`` profiles exactly those kernels (ncu flushes the caches before each
by default). Without ncu it only runs them. (The leading underscore
keeps it out of ``nox -s bench``: it measures nothing itself.)
"""

from __future__ import annotations

import argparse


def parse(spec: str) -> tuple[str, int, int, int, bool]:
    parts = spec.split(":")
    if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "act"):
        raise SystemExit(f"{spec!r}: expected KERNEL:KxN:ROWS or KERNEL:KxN:ROWS:act")
    k, _, n = parts[1].partition("x")
    try:
        return parts[0], int(k), int(n), int(parts[2]), len(parts) == 4
    except ValueError:
        raise SystemExit(f"{spec!r}: K, N and ROWS must be integers (e.g. 4096x14336:16)") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("layers", nargs="+", metavar="KERNEL:KxN:ROWS[:act]")
    parser.add_argument("--no-fp16", action="store_true", help="leave out the fp16 matmuls")
    args = parser.parse_args()
    specs = [parse(spec) for spec in args.layers]

    import torch

    from ferrule.kernel_bench import _quant_layers

    runs = []
    for kernel, k, n, rows, act in specs:
        layer = _quant_layers(k, n, 1, desc_act=act, kernel=kernel)[0]
        x = torch.randn(rows, k, device="cuda", dtype=torch.float16)
        weight = torch.randn(k, n, device="cuda", dtype=torch.float16)
        with torch.inference_mode():
            for _ in range(3):
                layer(x)
                torch.matmul(x, weight)
        runs.append((f"{k}x{n}_M{rows}", layer, x, weight))
        print(f"{k}x{n}_M{rows}: {kernel}{' act-order' if act else ''}")
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    with torch.inference_mode():
        for name, layer, x, weight in runs:
            torch.cuda.nvtx.range_push(name)
            layer(x)
            if not args.no_fp16:
                torch.matmul(x, weight)
            torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print(torch.cuda.get_device_name())


if __name__ == "__main__":
    main()
