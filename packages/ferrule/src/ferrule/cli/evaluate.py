"""``ferrule eval ppl``: perplexity of a model folder (quantized or not) over a text file."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a model", description="Evaluate a model.")
    evals = parser.add_subparsers(dest="evaluation", metavar="EVALUATION", required=True)
    ppl = evals.add_parser(
        "ppl",
        help="perplexity over a text file",
        description="Perplexity over the first N tokens of a text file (tokenized without "
        "special tokens). Default: non-overlapping windows of 2048 tokens as in the GPTQ paper, "
        "every token but each window's first scored. With a stride below the window, windows "
        "overlap and only each window's new tokens are scored. Works on a plain Hugging Face "
        "folder and on a GPTQ checkpoint.",
    )
    ppl.add_argument("model", type=Path, metavar="MODEL_DIR")
    ppl.add_argument("--text", type=Path, required=True, metavar="FILE")
    ppl.add_argument("--seq-len", type=int, default=2048, help="window length (default 2048)")
    ppl.add_argument("--stride", type=int, help="window step (default: the window length)")
    ppl.add_argument("--max-tokens", type=int, help="use only the first N tokens of the text")
    ppl.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    ppl.add_argument(
        "--dtype", choices=DTYPES, default="float32", help="compute dtype (default float32)"
    )
    ppl.add_argument("--kernel", help="linear kernel for a quantized model (default: selected)")
    ppl.add_argument("--json", action="store_true", help="print {perplexity, tokens, ...} as JSON")
    ppl.add_argument("--quiet", action="store_true", help="no progress bar")
    ppl.set_defaults(run=run_ppl)


def run_ppl(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoTokenizer

    from ferrule_quant.evaluate import perplexity, tokenize_text
    from ferrule_quant.loading import load_model

    if not args.text.is_file():
        raise FileNotFoundError(f"text file {args.text} does not exist")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    start = time.perf_counter()
    model = load_model(
        args.model, dtype=getattr(torch, args.dtype), device=device, kernel=args.kernel
    )
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    ids = tokenize_text(tokenizer, args.text.read_text(encoding="utf-8"), args.max_tokens)
    result = perplexity(
        model, ids, seq_len=args.seq_len, stride=args.stride, device=device, progress=not args.quiet
    )
    seconds = time.perf_counter() - start
    if args.json:
        print(
            json.dumps(
                {
                    "perplexity": result.perplexity,
                    "tokens": result.tokens,
                    "windows": result.windows,
                    "nll": result.nll,
                    "seconds": round(seconds, 2),
                }
            )
        )
    else:
        print(
            f"perplexity {result.perplexity:.4f} over {result.tokens} scored tokens "
            f"({result.windows} windows of {args.seq_len}) in {seconds:.1f} s"
        )
    return 0
