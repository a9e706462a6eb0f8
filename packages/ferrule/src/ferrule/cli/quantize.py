"""``ferrule quantize``: GPTQ (or RTN) a Hugging Face model folder into a GPTQ checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ferrule.cli.validate import add_config_arguments, config_from_args, print_problems
from ferrule.model_layers import linear_shapes
from ferrule_core import ConfigError, load_plugins

DTYPES = ("auto", "float16", "bfloat16", "float32")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "quantize",
        help="quantize a model folder with GPTQ or RTN",
        description="Quantize the decoder linears of a Hugging Face model folder block by block "
        "and write a GPTQ checkpoint. Interrupted runs resume when the same command is run again.",
    )
    parser.add_argument("model", type=Path, metavar="MODEL_DIR")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT")
    add_config_arguments(parser)
    parser.add_argument("--method", choices=("gptq", "rtn"), default="gptq")
    parser.add_argument(
        "--calibration",
        metavar="FILE",
        help="calibration text: a text file or JSON lines ('text' field); default: the English "
        "docstrings of Python's standard library (no network needed)",
    )
    parser.add_argument(
        "--num-samples", type=int, default=128, help="calibration windows (default 128)"
    )
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per window (default 512)")
    parser.add_argument(
        "--batch-size", type=int, default=1, help="windows per forward pass (default 1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the window draw (default 0)")
    parser.add_argument(
        "--mse", action="store_true", help="search each grid's scale for least error"
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="compute dtype (default: float16 on cuda, float32 on cpu)",
    )
    parser.add_argument("--max-shard-size", default="4GB", help="split safetensors past this size")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a checkpoint already in OUT"
    )
    parser.add_argument(
        "--restart", action="store_true", help="discard an interrupted run's work area"
    )
    parser.add_argument("--report", type=Path, help="also write the per-layer report as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ferrule_quant.pipeline import CalibrationOptions, quantize_model

    try:
        config = config_from_args(args, quant_method=args.method)
    except ConfigError as exc:
        return print_problems(exc.problems, sys.stderr)
    registry = load_plugins()
    shapes = linear_shapes(args.model, registry)
    problems = [p for name, (k, n) in shapes.items() for p in config.layer_problems(name, k, n)]
    if problems:
        return print_problems(problems, sys.stderr)
    report = quantize_model(
        args.model,
        args.output,
        config,
        calibration=CalibrationOptions(
            source=args.calibration,
            num_samples=args.num_samples,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            seed=args.seed,
        ),
        device=args.device,
        dtype=None if args.dtype == "auto" else getattr(torch, args.dtype),
        mse=args.mse,
        overwrite=args.overwrite,
        restart=args.restart,
        max_shard_size=args.max_shard_size,
        registry=registry,
        progress=not args.quiet,
    )
    print(report.format_table())
    print(f"wrote {args.output}")
    if args.report:
        args.report.write_text(json.dumps(report.to_dict(), indent=2))
    return 0
