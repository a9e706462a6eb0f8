"""The ``ferrule`` command.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args)``;
``run`` returns the exit status. Errors ferrule raises on purpose print one clear
message and exit 1; invalid input to ``validate`` exits 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ferrule import __version__
from ferrule.cli import (
    bench,
    check_kernels,
    demo,
    evaluate,
    generate,
    plugins,
    quantize,
    serve,
    validate,
)
from ferrule_core import FerruleError

COMMANDS = (
    plugins,
    validate,
    quantize,
    evaluate,
    generate,
    serve,
    bench,
    demo,
    check_kernels,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferrule",
        description="Quantize large language models with GPTQ and serve them.",
    )
    parser.add_argument("--version", action="version", version=f"ferrule {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.run(args)
    except FerruleError as exc:
        print(f"ferrule: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
