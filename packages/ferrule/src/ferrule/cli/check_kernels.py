"""``ferrule check-kernels``: a self-test of the installed kernels on a random layer.

Lists the installed plugins, then quantizes a random linear layer at every bit width,
packs it into GPTQ tensors, checks the packing round-trips bit-exactly, and runs the layer
back through the reference kernel and through the kernel the registry selects, each
compared with a float64 dequantize-then-matmul.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from ferrule import __version__
from ferrule_core import load_plugins

BITS = (2, 3, 4, 8)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check-kernels",
        help="quantize a random layer and run it through the kernels",
        description="Quantize a random linear layer at 2/3/4/8 bits and run it back through "
        "the reference kernel and the automatically selected one.",
    )
    parser.add_argument("--in-features", type=int, default=2048)
    parser.add_argument("--out-features", type=int, default=2048)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="rows of the input")
    parser.add_argument(
        "--dtype",
        default="bfloat16",
        choices=("bfloat16", "float16", "float32"),
        help="activation dtype (default bfloat16, which torch's CPU int4/int8 ops vectorize)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ferrule_core import QuantLinear
    from ferrule_core.format import dequantize, pack, quantize_rtn, unpack_cols, unpack_rows

    registry = load_plugins()
    platform = registry.select_platform() if registry.platforms else None
    installed = ", ".join(f"{p.name} ({p.distribution} {p.version})" for p in registry.plugins)
    print(f"ferrule {__version__}; plugins: {installed}")
    print(f"platform: {platform.name if platform else 'none installed (reference kernel only)'}")
    print(
        f"random linear layer {args.in_features} -> {args.out_features}, "
        f"group_size {args.group_size}, input {args.batch}x{args.in_features} {args.dtype}\n"
    )
    gen = torch.Generator().manual_seed(args.seed)
    weight = torch.randn(args.out_features, args.in_features, generator=gen) / args.in_features**0.5
    x = torch.randn(args.batch, args.in_features, generator=gen).to(getattr(torch, args.dtype))
    dense = x.double() @ weight.double().t()

    header = (
        "bits",
        "pack",
        "weight err",
        "out err",
        "reference",
        "ms",
        "selected",
        "ms",
        "auto err",
    )
    rows = []
    for bits in BITS:
        quantized = quantize_rtn(weight, bits, args.group_size, sym=True)
        tensors = pack(quantized, scale_dtype=torch.float32)
        exact = torch.equal(unpack_rows(tensors["qweight"], bits), quantized.codes) and torch.equal(
            unpack_cols(tensors["qzeros"], bits), quantized.zeros
        )
        w64 = dequantize(
            tensors["qweight"],
            tensors["qzeros"],
            tensors["scales"],
            tensors["g_idx"],
            bits,
            dtype=torch.float64,
        )
        oracle = x.double() @ w64
        row: list[Any] = [bits, "exact" if exact else "MISMATCH"]
        row.append(_rel(w64.t(), weight.double()))
        row.append(_rel(oracle, dense))
        for choice in ("reference", None):
            layer = QuantLinear.from_tensors(
                tensors, bits, args.group_size, kernel=choice, registry=registry
            )
            with torch.no_grad():
                layer(x)  # choose the kernel and prepare it outside the timing
                start = time.perf_counter()
                out = layer(x)
                took = (time.perf_counter() - start) * 1e3
            if choice is None:
                row.append(layer.kernel_spec.name)
            row.extend([f"{_rel(out.double(), oracle):.1e}", f"{took:.1f}"])
        # row: bits, pack, w err, out err, ref err, ref ms, selected, sel err, sel ms
        rows.append(
            [
                row[0],
                row[1],
                f"{row[2]:.4f}",
                f"{row[3]:.4f}",
                row[4],
                row[5],
                row[6],
                row[8],
                row[7],
            ]
        )
    print(_table(header, rows))
    print(
        "\nweight err / out err: relative error of the quantized weight and layer output against "
        "the float layer;\nreference / auto err: kernel output against a float64 "
        "dequantize-then-matmul of the same GPTQ tensors."
    )
    return 0 if all(r[1] == "exact" for r in rows) else 1


def _rel(actual: Any, expected: Any) -> float:
    return float((actual - expected).norm() / expected.norm())


def _table(header: tuple[str, ...], rows: list[list[Any]]) -> str:
    cells = [list(header)] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
