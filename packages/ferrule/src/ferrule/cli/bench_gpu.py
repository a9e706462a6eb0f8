"""``ferrule bench kernels``, ``bench latency`` and ``bench random-model``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ferrule.cli.engine_args import add_engine_arguments, engine_kwargs


def add_gpu_benchmarks(benches: Any) -> None:
    kernels = benches.add_parser(
        "kernels",
        help="W4A16 matmuls: ferrule's kernels vs fp16 cuBLAS vs torch's int4 kernel",
        description="Time 4-bit GPTQ matmuls (group size 128, with and without act-order) "
        "against fp16 torch.matmul and torch's _weight_int4pack_mm for each weight shape and "
        "row count, in one run on one GPU, and print the ratios and achieved GB/s.",
    )
    kernels.add_argument(
        "--shapes",
        default="4096x4096,14336x4096,4096x14336,28672x8192",
        help="KxN weight shapes, comma-separated (K: input features)",
    )
    kernels.add_argument("--rows", default="1,4,16,64,256,1024", help="row counts M")
    kernels.add_argument(
        "--kernel", action="append", default=[], help="also time this kernel, forced (repeatable)"
    )
    kernels.add_argument("--json", action="store_true", help="print the result as JSON")
    kernels.set_defaults(run=run_kernels)

    latency = benches.add_parser(
        "latency",
        help="decode speed of a batch: time to first token and decode tokens/s",
        description="Generate OUTPUT_LEN tokens for BATCH_SIZE random prompts and report the "
        "prefill time and the decode tokens/s per sequence (medians over iterations).",
    )
    latency.add_argument("model", type=Path, metavar="MODEL_DIR")
    latency.add_argument("--batch-size", type=int, default=1, help="requests (1)")
    latency.add_argument("--input-len", type=int, default=128, help="prompt tokens (128)")
    latency.add_argument("--output-len", type=int, default=256, help="output tokens (256)")
    latency.add_argument("--iterations", type=int, default=3, help="timed runs (3)")
    latency.add_argument("--json", action="store_true", help="print the result as JSON")
    add_engine_arguments(latency)
    latency.set_defaults(run=run_latency)

    random_model = benches.add_parser(
        "random-model",
        help="write a model folder of a real shape (no weights) for --load-format dummy",
        description="Write config.json, a tokenizer over the whole vocabulary and, with "
        "--bits, a GPTQ quantize_config.json for a known shape (llama3-8b). Run it with "
        "--load-format dummy (random weights).",
    )
    random_model.add_argument("folder", type=Path, metavar="OUT_DIR")
    random_model.add_argument("--shape", default="llama3-8b", help="llama3-8b (default), tiny")
    random_model.add_argument("--bits", type=int, help="GPTQ bits (default: a float model)")
    random_model.add_argument("--group-size", type=int, default=128, help="GPTQ group (128)")
    random_model.add_argument("--desc-act", action="store_true", help="act-order layers")
    random_model.set_defaults(run=run_random_model)


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(
            f"ferrule: error: {what}={text!r} must be integers, e.g. 1,16,64"
        ) from None
    if not values or any(v < 1 for v in values):
        raise SystemExit(f"ferrule: error: {what}={text!r} must list positive integers")
    return values


def _shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        parts = item.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise SystemExit(f"ferrule: error: --shapes item {item!r} is not KxN, e.g. 4096x14336")
        shapes.append((int(parts[0]), int(parts[1])))
    return shapes


def run_kernels(args: argparse.Namespace) -> int:
    from ferrule.kernel_bench import format_table, run

    report = run(
        tuple(_shapes(args.shapes)),
        tuple(_ints(args.rows, "--rows")),
        tuple(args.kernel),
        progress=not args.json,
    )
    print(json.dumps(report) if args.json else format_table(report))
    return 0


def run_latency(args: argparse.Namespace) -> int:
    from ferrule.latency import run

    try:
        report = run(
            str(args.model),
            batch_size=args.batch_size,
            input_len=args.input_len,
            output_len=args.output_len,
            iterations=args.iterations,
            **engine_kwargs(args),
        )
    except ValueError as exc:
        raise SystemExit(f"ferrule: error: {exc}") from None
    if args.json:
        print(json.dumps(report))
        return 0
    settings = report["settings"]
    print(
        f"batch {settings['batch_size']}, {settings['input_len']} prompt + "
        f"{settings['output_len']} output tokens, {settings['dtype']}, CUDA graphs "
        f"{'on' if settings['cuda_graphs'] else 'off'}, kernels {', '.join(report['kernels'])}"
    )
    print(
        f"prefill {report['prefill_s'] * 1e3:.1f} ms, decode {report['decode_s']:.3f} s: "
        f"{report['decode_tokens_per_s']:.1f} tokens/s per sequence  ({report['machine']})"
    )
    return 0


def run_random_model(args: argparse.Namespace) -> int:
    from ferrule.random_model import write_random_model

    try:
        folder = write_random_model(
            args.folder,
            args.shape,
            bits=args.bits,
            group_size=args.group_size,
            desc_act=args.desc_act,
        )
    except ValueError as exc:
        raise SystemExit(f"ferrule: error: {exc}") from None
    print(f"wrote {folder} (shape {args.shape}; run it with --load-format dummy)")
    return 0
