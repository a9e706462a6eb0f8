"""``ferrule serve``: the OpenAI-compatible HTTP server over a model folder (float or GPTQ)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from ferrule.cli.engine_args import add_engine_arguments, engine_kwargs

logger = logging.getLogger("ferrule.server")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API",
        description="Serve MODEL_DIR at /v1/completions, /v1/chat/completions, /v1/models, "
        "/health, /metrics, /tokenize and /detokenize. Binds 127.0.0.1 unless --host says "
        "otherwise; with --api-key (or FERRULE_API_KEY) every route but /health needs "
        "'Authorization: Bearer KEY'.",
    )
    parser.add_argument("model", type=Path, metavar="MODEL_DIR")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (8000)")
    parser.add_argument("--api-key", default=os.environ.get("FERRULE_API_KEY"), help="bearer key")
    parser.add_argument(
        "--served-model-name", help="the model name clients send (default: the folder name)"
    )
    parser.add_argument(
        "--max-waiting", type=int, default=1024, help="waiting requests before 429 (1024)"
    )
    add_engine_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ferrule_engine.async_llm import AsyncLLM
    from ferrule_engine.server.app import build_app

    if not 0 < args.port < 65536:
        raise SystemExit(f"ferrule: error: --port={args.port} must be in 1..65535")
    name = args.served_model_name or args.model.resolve().name
    llm = AsyncLLM(args.model, max_waiting=args.max_waiting, **engine_kwargs(args))
    app = build_app(llm, served_model_name=name, api_key=args.api_key)
    logger.warning("serving %s as %r on http://%s:%d/v1", args.model, name, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
