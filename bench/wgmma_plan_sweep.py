"""Every forced (tile, splits of K) of ``cuda-gptq-wgmma`` against its own plan.

    python bench/wgmma_plan_sweep.py [--rows 64,128,256,512,1024] [--shapes 4096x4096,...]
    python bench/wgmma_plan_sweep.py --clusters 2   # split-K in clusters wherever it can
    python bench/wgmma_plan_sweep.py --build d3=-DFERRULE_WGMMA_PENDING=3  # and another build

For each layer shape (K x N) and row count it prints the ratio to fp16 ``torch.matmul`` of
the kernel's plan (named ``t<rows>x<columns>s<splits>``, a block's tile of rows of x and of
output columns, with ``c`` where split-K finishes in a cluster; timed before and after the
sweep), the four fastest forced pairs and all of them, for the installed build (``base``)
and each ``--build`` of the extension with extra nvcc flags (built as
``bench/cuda_gemv_variants.py`` builds its variants), timed as ``ferrule bench kernels`` times
(CUDA-graph replays rotating over weight copies larger than L2), in one run. The constants of
the plan's cost model (``wgmma_step_cost`` and the split-K terms in ``csrc/gptq_wgmma.cu``)
were fitted to this script's output.
"""

from __future__ import annotations

import argparse

SHAPES = "4096x4096,4096x6144,14336x4096,4096x14336,28672x8192"
# The kernel's tiles: rows of x, m64 tiles a consumer (128 output columns each a block).
TILES = ((32, 2), (64, 2), (64, 1), (128, 2), (128, 1), (256, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="64,128,256,512,1024")
    parser.add_argument("--shapes", default=SHAPES)
    parser.add_argument(
        "--clusters",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="split-K in thread block clusters: 0 never, 1 where the plan estimates it faster"
        " (the default), 2 wherever it can (forced pairs included)",
    )
    parser.add_argument(
        "--build",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="also sweep a build of the extension with these nvcc flags (comma-separated)",
    )
    args = parser.parse_args()

    import tempfile
    from pathlib import Path

    import torch
    from cuda_gemv_variants import build

    root = Path(tempfile.mkdtemp(prefix="ferrule-plan-sweep-"))
    builds = {"base": None}
    for spec in args.build:
        name, _, flags = spec.partition("=")
        builds[name] = build(name, flags.split(","), root / name)

    from ferrule.kernel_bench import _copies, _quant_layers, _w4_bytes, time_calls

    def timed(layers, x, tokens=0, tiles=0, splits=0):
        for layer in layers:
            layer._kernel.tokens, layer._kernel.tiles, layer._kernel.splits = tokens, tiles, splits
        try:
            return time_calls([lambda layer=layer: layer(x) for layer in layers])
        finally:
            for layer in layers:
                layer._kernel.tokens, layer._kernel.tiles, layer._kernel.splits = 0, 0, 0

    def sweep(layers, x, m, k, n, steps, module):
        """(plan, the plan's time, {(tokens, columns, splits): time}) of one build."""
        kernel = layers[0]._kernel
        chosen = module.gptq_wgmma_plan(m, k, n, kernel.counters.numel(), 0, 0, 0, args.clusters)
        plan = timed(layers, x)
        forced = {}
        for tokens, tiles in TILES:
            if tokens > 2 * m:
                continue
            for splits in (1, 2, 3, 4, 6, 8):
                if steps // splits >= 4:
                    time = timed(layers, x, tokens, tiles, splits)
                    forced[(tokens, 128 * tiles, splits)] = time
        return chosen, (plan + timed(layers, x)) / 2, forced

    for shape in args.shapes.split(","):
        k, n = (int(v) for v in shape.split("x"))
        weights = [
            torch.randn(k, n, device="cuda", dtype=torch.float16) * 0.02
            for _ in range(_copies(k * n * 2))
        ]
        layers = _quant_layers(
            k, n, _copies(_w4_bytes(k, n, 1)), desc_act=False, kernel="cuda-gptq-wgmma"
        )
        steps = k // 64
        for m in (int(v) for v in args.rows.split(",")):
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            with torch.inference_mode():
                for layer in layers:
                    layer(x)  # builds each layer's kernel for this many rows
                    layer._kernel.clusters = args.clusters
                installed = layers[0]._kernel.module
                fp16 = time_calls([lambda w=w, x=x: torch.matmul(x, w) for w in weights])
                results = {}
                for name, module in builds.items():
                    for layer in layers:
                        layer._kernel.module = module or installed
                    results[name] = sweep(layers, x, m, k, n, steps, module or installed)
                for layer in layers:
                    layer._kernel.module = installed
                fp16 = (
                    fp16 + time_calls([lambda w=w, x=x: torch.matmul(x, w) for w in weights])
                ) / 2
            for name, (chosen, plan, forced) in results.items():
                best = sorted(forced.items(), key=lambda item: item[1])[:4]
                tokens, splits, _, in_clusters, tiles = chosen
                print(
                    f"{name} {k}x{n} M={m:5d} fp16 {fp16:6.1f}us plan "
                    f"t{tokens}x{128 * tiles}s{splits}{'c' if in_clusters else ''} "
                    f"{fp16 / plan:.2f}x | best "
                    + " ".join(f"t{t}x{c}s{s} {fp16 / v:.2f}x" for (t, c, s), v in best)
                    + " | all "
                    + " ".join(
                        f"t{t}x{c}s{s}:{fp16 / v:.2f}" for (t, c, s), v in sorted(forced.items())
                    ),
                    flush=True,
                )
        del weights, layers
        torch.cuda.empty_cache()
    print(f"GPU: {torch.cuda.get_device_name()}")


if __name__ == "__main__":
    main()
