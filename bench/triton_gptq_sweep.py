"""Sweep ``triton-gptq`` launch configurations on the GPU, against fp16 cuBLAS, in one run.

    python bench/triton_gptq_sweep.py [--shapes 4096x14336,28672x8192] [--rows 16,64,256,1024]

For each weight shape and row count it times fp16 ``torch.matmul`` and the Triton kernel
under each candidate configuration (CUDA-graph replays rotating over weight copies, as
``ferrule bench kernels``), and prints every time and the best configuration per case: the
data to put in ``ferrule_triton_kernels.configs.CONFIGS``.
"""

from __future__ import annotations

import argparse
import itertools


def candidates(m: int):
    """The configurations to time at ``m`` rows: around the transposed-tile experiment's best
    (a first experiment on an H100, 2026-11-27; see ``CONFIGS``)."""
    from ferrule_triton_kernels.configs import TileConfig

    found = []
    if m <= 64:
        # Small batches: the split-K program, one tile of rows. BLOCK_N is the tensor cores'
        # M side in the transposed tile (64 per warpgroup), so 8 warps only with 128.
        block_m = max(16, 1 << (m - 1).bit_length())
        for block_n, block_k, warps, stages, split in itertools.product(
            (64, 128), (64, 128), (4, 8), (3, 4), (1, 2, 4, 8)
        ):
            if block_n == 64 and warps == 8:
                continue
            found.append(TileConfig("gemv", block_m, block_n, block_k, warps, stages, split))
    if 64 < m <= 256:
        # Mid-size batches on narrow layers: the split-K program with several row tiles, so
        # that K splits fill the GPU when N alone gives too few tiles.
        for block_m, block_n, warps, split in itertools.product(
            (64, 128), (64, 128), (4, 8), (1, 2, 4)
        ):
            if block_n == 64 and warps == 8:
                continue
            found.append(TileConfig("gemv", block_m, block_n, 64, warps, 3, split))
    if m >= 64:
        for block_m, block_n, block_k, warps, stages in (
            (64, 128, 64, 4, 4),
            (64, 256, 64, 8, 3),
            (128, 64, 64, 4, 4),
            (128, 128, 64, 4, 4),
            (128, 128, 64, 8, 3),
            (128, 128, 128, 8, 3),
            (128, 256, 64, 8, 3),
            (256, 64, 64, 4, 3),
            (256, 128, 64, 8, 3),
            (256, 128, 64, 8, 4),
        ):
            if block_m <= max(64, m):
                found.append(TileConfig("gemm", block_m, block_n, block_k, warps, stages))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="4096x14336,28672x8192")
    parser.add_argument("--rows", default="16,64,256,1024")
    args = parser.parse_args()

    import torch

    from ferrule.kernel_bench import _copies, _quant_layers, _w4_bytes, time_calls
    from ferrule_triton_kernels.linear import TritonGptqLinear

    for shape in args.shapes.split(","):
        k, n = (int(v) for v in shape.split("x"))
        layers = _quant_layers(k, n, _copies(_w4_bytes(k, n, 1)), desc_act=False, kernel=None)
        weights = [torch.randn(k, n, device="cuda", dtype=torch.float16) for _ in range(2)]
        for m in (int(v) for v in args.rows.split(",")):
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            base = time_calls([lambda w=w, x=x: torch.matmul(x, w) for w in weights])
            results = []
            for config in candidates(m):
                kernels = [TritonGptqLinear(layer, table={1 << 30: config}) for layer in layers]
                try:
                    micro = time_calls([lambda kern=kern, x=x: kern.forward(x) for kern in kernels])
                except Exception as exc:
                    print(f"  {shape} M={m} {config}: {type(exc).__name__}", flush=True)
                    continue
                results.append((micro, config))
                print(f"  {shape} M={m} {base / micro:.2f}x {micro:.1f}us {config}", flush=True)
            results.sort(key=lambda r: r[0])
            best = results[0]
            print(f"BEST {shape} M={m}: fp16 {base:.1f}us, {base / best[0]:.2f}x with {best[1]}")


if __name__ == "__main__":
    main()
