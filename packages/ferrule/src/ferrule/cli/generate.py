"""``ferrule generate``: answer prompts with a model folder (float or GPTQ) offline."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ferrule.cli.engine_args import add_engine_arguments, engine_kwargs


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate text from prompts",
        description="Generate a completion for each --prompt with the engine (paged KV cache, "
        "continuous batching). With --chat each prompt is one user message rendered by the "
        "model's chat template.",
    )
    parser.add_argument("model", type=Path, metavar="MODEL_DIR")
    parser.add_argument(
        "--prompt", action="append", required=True, metavar="TEXT", help="a prompt (repeatable)"
    )
    parser.add_argument("--chat", action="store_true", help="send each prompt as a chat message")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens to generate (64)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--seed", type=int, help="per-request seed (reproducible sampling)")
    parser.add_argument("--ignore-eos", action="store_true", help="do not stop at end of text")
    parser.add_argument("--json", action="store_true", help="print the outputs as JSON")
    add_engine_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ferrule_engine.llm import LLM
    from ferrule_engine.sampling_params import SamplingParams

    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        ignore_eos=args.ignore_eos,
    )
    llm = LLM(args.model, **engine_kwargs(args))
    started = time.perf_counter()
    if args.chat:
        conversations = [[{"role": "user", "content": p}] for p in args.prompt]
        outputs = llm.chat(conversations, params)
    else:
        outputs = llm.generate(args.prompt, params)
    seconds = time.perf_counter() - started
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    if args.json:
        records = [
            {
                "prompt": prompt,
                "text": o.outputs[0].text,
                "token_ids": o.outputs[0].token_ids,
                "prompt_token_ids": o.prompt_token_ids,
                "finish_reason": o.outputs[0].finish_reason,
            }
            for prompt, o in zip(args.prompt, outputs, strict=True)
        ]
        print(json.dumps({"outputs": records, "seconds": seconds, "generated_tokens": generated}))
        return 0
    for prompt, output in zip(args.prompt, outputs, strict=True):
        completion = output.outputs[0]
        print(f"### {prompt}\n{completion.text}\n[{completion.finish_reason}]\n")
    rate = generated / seconds if seconds > 0 else float("nan")
    print(f"{generated} tokens in {seconds:.2f} s ({rate:.1f} tokens/s)")
    return 0
