"""The one-row GEMV against fp16 as a layer widens: time follows the units a warp streams.

    python bench/gemv_width_scan.py [--shapes 4096x4096,4096x8448,...]

For each layer (K x N) at one row it prints ``cuda-gptq-gemv``'s plan (tile rows, splits,
units a split), its time and GB/s, fp16 ``torch.matmul``'s, and their ratio, timed as
``ferrule bench kernels`` times (CUDA-graph replays rotating over weight copies larger than
L2; each the mean of two timings, interleaved), in one run. The default widths at K = 4096 go
from 8 splits of 2 units a warp (N = 4096) to 2 splits of 8 (N = 14336) and on to a full wave
of blocks (N = 16896: 132 tiles of 128 columns in 2 splits fill the 264 slots of an H200's
132 multiprocessors): where the time moves with the units a warp and not with the bytes, a
layer's fixed cost is the lever, not the bandwidth.
"""

from __future__ import annotations

import argparse

SHAPES = (
    "4096x4096,4096x4224,4096x8448,4096x14336,4096x15360,4096x16384,4096x16896,"
    "14336x4096,14336x4224"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=SHAPES)
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(",")]

    import torch

    from ferrule.kernel_bench import _copies, _quant_layers, _time_layers, _w4_bytes, time_calls

    print(
        "| K x N | plan (tile rows, splits, units a split) | ours us | GB/s | fp16 us | GB/s | ratio |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for k, n in shapes:
        layers = _quant_layers(
            k, n, _copies(_w4_bytes(k, n, 1)), desc_act=False, kernel="cuda-gptq-gemv"
        )
        weights = [
            torch.randn(k, n, device="cuda", dtype=torch.float16) for _ in range(_copies(k * n * 2))
        ]
        x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        ours, fp16 = [], []
        with torch.inference_mode():
            for layer in layers:
                layer(x)
            for _ in range(2):
                ours.append(_time_layers(layers, x))
                fp16.append(time_calls([lambda w=w, x=x: torch.matmul(x, w) for w in weights]))
        us, base = sum(ours) / 2, sum(fp16) / 2
        kernel = layers[0]._kernel
        plan = kernel.module.gptq_gemv_plan(1, k, n, 4, kernel.counters.numel())
        print(
            f"| {k}x{n} | {', '.join(str(v) for v in plan)} | {us:.2f} | {_w4_bytes(k, n, 1) / us / 1e3:.0f}"
            f" | {base:.2f} | {k * n * 2 / base / 1e3:.0f} | {base / us:.2f}x |",
            flush=True,
        )
        del layers, weights
    print(f"GPU: {torch.cuda.get_device_name()}")


if __name__ == "__main__":
    main()
