"""``ferrule bench throughput`` (the engine against ``transformers``) and ``bench serve``;
the GPU benchmarks (``kernels``, ``latency``, ``random-model``) are in :mod:`bench_gpu`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ferrule.cli.bench_gpu import add_gpu_benchmarks
from ferrule.cli.engine_args import add_engine_arguments, engine_kwargs


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks", description="Benchmarks.")
    benches = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    tput = benches.add_parser(
        "throughput",
        help="offline throughput: ferrule's engine vs transformers generate",
        description="Run the same requests (random token ids, fixed seed) through ferrule's "
        "engine (all at once, continuous batching) and through transformers generate (in "
        "arrival order, batches of --hf-batch-size, each request cut to its own output "
        "length), and print both throughputs in useful output tokens/s and their ratio.",
    )
    tput.add_argument("model", type=Path, metavar="MODEL_DIR")
    tput.add_argument("--num-prompts", type=int, default=64, help="requests (64)")
    tput.add_argument("--input-len", type=int, default=512, help="prompt tokens (512)")
    tput.add_argument("--output-len", type=int, default=128, help="output tokens (128)")
    tput.add_argument(
        "--spread",
        action="store_true",
        help="draw each length uniformly between a sixteenth of the given length and the length",
    )
    tput.add_argument("--hf-batch-size", type=int, default=32, help="transformers batch (32)")
    tput.add_argument("--seed", type=int, default=0, help="seed of the request draw (0)")
    tput.add_argument("--json", action="store_true", help="print the result as JSON")
    add_engine_arguments(tput)
    tput.set_defaults(run=run_throughput)

    serve = benches.add_parser(
        "serve",
        help="load a running server: Poisson arrivals, TTFT, TPOT, throughput",
        description="Send streaming completions to a running OpenAI-compatible server "
        "(ferrule serve) with Poisson arrivals and report throughput, time to first token and "
        "time per output token (mean, p50, p99) and failures.",
    )
    serve.add_argument("--url", required=True, help="the server's /v1 URL")
    serve.add_argument("--num-prompts", type=int, default=100, help="requests (100)")
    serve.add_argument(
        "--request-rate", type=float, default=float("inf"), help="requests/s (inf: all at once)"
    )
    serve.add_argument("--concurrency", type=int, default=64, help="requests in flight (64)")
    serve.add_argument("--input-len", type=int, default=128, help="prompt tokens (128)")
    serve.add_argument("--output-len", type=int, default=64, help="output tokens (64)")
    serve.add_argument("--api-key", help="bearer key, if the server wants one")
    serve.add_argument("--json", action="store_true", help="print the result as JSON")
    serve.set_defaults(run=run_serve)
    add_gpu_benchmarks(benches)


def run_throughput(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from ferrule.throughput import make_requests, report, run_engine, run_transformers

    if args.hf_batch_size < 1:
        raise SystemExit(f"ferrule: error: --hf-batch-size={args.hf_batch_size} must be >= 1")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    requests = make_requests(
        args.num_prompts,
        args.input_len,
        args.output_len,
        tokenizer.vocab_size,
        spread=args.spread,
        seed=args.seed,
    )
    ours, dtype = run_engine(args.model, requests, **engine_kwargs(args))
    theirs = run_transformers(
        args.model,
        requests,
        args.hf_batch_size,
        dtype,
        random_weights=args.load_format == "dummy",
    )
    settings = {
        "model": str(args.model),
        "num_prompts": args.num_prompts,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "spread": args.spread,
        "hf_batch_size": args.hf_batch_size,
        "dtype": str(dtype).removeprefix("torch."),
    }
    result = report(ours, theirs, settings)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{'engine':<14}{'requests':>9}{'useful tokens':>15}{'seconds':>10}{'tokens/s':>10}")
    for row in result["results"]:
        print(
            f"{row['name']:<14}{args.num_prompts:>9}{row['useful_tokens']:>15}"
            f"{row['seconds']:>10.1f}{row['tokens_per_second']:>10.1f}"
        )
    steps = result["results"][0].get("steps")
    if steps:
        print(
            f"ferrule steps: {steps['steps']:.0f} ({steps['graph_steps']:.0f} from CUDA graphs, "
            f"{steps['graph_seconds']:.1f} s; {steps['eager_steps']:.0f} eager, "
            f"{steps['eager_seconds']:.1f} s); scheduling {steps['schedule_seconds']:.1f} s, "
            f"outputs {steps['other_seconds']:.1f} s"
        )
    print(f"ratio ferrule / transformers: {result['ratio']:.2f}x  ({result['machine']})")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import asyncio

    from ferrule.serve_bench import run_load

    for name in ("num_prompts", "concurrency", "input_len", "output_len"):
        if getattr(args, name) < 1:
            raise SystemExit(f"ferrule: error: --{name.replace('_', '-')} must be at least 1")
    if not args.request_rate > 0:
        raise SystemExit("ferrule: error: --request-rate must be positive (or inf)")
    report = asyncio.run(
        run_load(
            args.url,
            num_prompts=args.num_prompts,
            request_rate=args.request_rate,
            concurrency=args.concurrency,
            input_len=args.input_len,
            output_len=args.output_len,
            api_key=args.api_key,
        )
    )
    summary = report.summary()
    if args.json:
        print(json.dumps(summary))
        return 0 if summary["completed"] else 1
    print(
        f"{summary['completed']}/{summary['requests']} requests in {summary['duration_s']:.1f} s: "
        f"{summary['output_tokens_per_s']:.1f} output tokens/s, "
        f"{summary['requests_per_s']:.2f} requests/s"
    )
    for key, label in (("ttft_s", "time to first token"), ("tpot_s", "time per output token")):
        row = summary[key]
        print(f"{label}: mean {row['mean']:.3f} s, p50 {row['p50']:.3f} s, p99 {row['p99']:.3f} s")
    if summary["failed"]:
        print(f"failures: {summary['errors']}")
    return 0 if summary["completed"] else 1
