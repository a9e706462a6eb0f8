"""Command-line options shared by the commands that build an engine."""

from __future__ import annotations

import argparse
from typing import Any

DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument("--dtype", choices=DTYPES, default="auto", help="activation dtype (auto)")
    group.add_argument("--platform", help="cpu, cuda, ... (default: the best usable one)")
    group.add_argument("--max-num-seqs", type=int, default=256, help="sequences per step (256)")
    group.add_argument(
        "--max-num-batched-tokens", type=int, default=8192, help="token budget per step (8192)"
    )
    group.add_argument("--max-model-len", type=int, help="context limit (default: the model's)")
    group.add_argument("--kv-cache-gib", type=float, help="KV cache size in GiB")
    group.add_argument("--block-size", type=int, default=16, help="KV block size in tokens (16)")
    group.add_argument("--no-prefix-caching", action="store_true", help="turn prefix caching off")
    group.add_argument("--kernel", help="linear kernel for a GPTQ model (default: selected)")
    group.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.9,
        help="share of the GPU's memory the engine may use, KV cache included (0.9)",
    )
    group.add_argument(
        "--enforce-eager", action="store_true", help="no CUDA graphs for decode steps"
    )
    group.add_argument(
        "--load-format",
        choices=("auto", "dummy"),
        default="auto",
        help="dummy: random weights of the folder's shapes, for speed measurements (auto)",
    )


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    memory = None if args.kv_cache_gib is None else int(args.kv_cache_gib * (1 << 30))
    return {
        "dtype": args.dtype,
        "platform": args.platform,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "max_model_len": args.max_model_len,
        "kv_cache_memory": memory,
        "block_size": args.block_size,
        "enable_prefix_caching": not args.no_prefix_caching,
        "linear_kernel": args.kernel,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "enforce_eager": args.enforce_eager,
        "load_format": args.load_format,
    }
