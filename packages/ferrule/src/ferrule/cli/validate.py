"""``ferrule validate``: check a quantization config before any compute is spent.

Exit 0 when everything is valid; exit 2 listing every problem, each with a suggestion.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TextIO

from ferrule.model_layers import linear_shapes
from ferrule_core import ConfigError, KernelRequest, QuantizeConfig, SelectionError, load_plugins
from ferrule_core.registry import Registry

INVALID = 2


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The quantization flags shared with ``ferrule quantize``."""
    defaults = QuantizeConfig()
    parser.add_argument(
        "--bits", type=int, default=defaults.bits, help="bits per weight: 2, 3, 4 or 8"
    )
    parser.add_argument(
        "--group-size",
        type=int,
        default=defaults.group_size,
        help="rows sharing a scale; -1 for one group per output channel (default 128)",
    )
    parser.add_argument(
        "--desc-act",
        action="store_true",
        help="act-order: quantize columns by decreasing Hessian diagonal",
    )
    parser.add_argument(
        "--static-groups",
        action="store_true",
        help="with act-order, fix group grids before reordering",
    )
    parser.add_argument(
        "--no-sym",
        dest="sym",
        action="store_false",
        help="asymmetric grid (a zero point per group)",
    )
    parser.add_argument(
        "--damp",
        type=float,
        default=defaults.damp_percent,
        help="Hessian damping fraction, 0 < d < 1 (default 0.01)",
    )
    parser.add_argument(
        "--format",
        dest="checkpoint_format",
        default=defaults.checkpoint_format,
        help="checkpoint format: gptq (v1) or gptq_v2 (default gptq)",
    )


def print_problems(problems: list[str], file: TextIO | None = None) -> int:
    """Print ``problems`` one per line under a count; returns the exit status for them."""
    print(f"invalid: {len(problems)} problem(s)", file=file)
    for problem in problems:
        print(f"  - {problem}", file=file)
    return INVALID


def config_from_args(args: argparse.Namespace, **extra: Any) -> QuantizeConfig:
    return QuantizeConfig(
        **extra,
        bits=args.bits,
        group_size=args.group_size,
        desc_act=args.desc_act,
        static_groups=args.static_groups,
        sym=args.sym,
        damp_percent=args.damp,
        checkpoint_format=args.checkpoint_format,
    )


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check quantization settings (optionally against a model and a kernel)",
        description="Validate the flags `ferrule quantize` takes; optionally against a model "
        "folder's layer shapes and a chosen kernel or platform. Exit 0 when valid, 2 otherwise.",
    )
    add_config_arguments(parser)
    parser.add_argument("--model", type=Path, help="a Hugging Face model folder (safetensors)")
    parser.add_argument("--kernel", help="a linear kernel that must serve every layer")
    parser.add_argument(
        "--platform", help="the platform to serve on (default: the best usable here)"
    )
    parser.add_argument(
        "--dtype", default="float16", help="activation dtype when serving (default float16)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    problems: list[str] = []
    notes: list[str] = []
    config = None
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        problems.extend(exc.problems)
    registry = load_plugins() if (args.model or args.kernel or args.platform) else None
    shapes: dict[str, tuple[int, int]] = {}
    if config is not None and args.model is not None:
        shapes = linear_shapes(args.model, registry)
        if not shapes:
            problems.append(
                f"{args.model}: found no linear layers inside decoder blocks to quantize"
            )
        for name, (k, n) in shapes.items():
            problems.extend(config.layer_problems(name, k, n))
        notes.append(f"{len(shapes)} linear layers in {args.model}")
    if config is not None and registry is not None and (args.kernel or args.platform):
        problems.extend(_serving_problems(config, registry, shapes, args, notes))
    _report(args, config, problems, notes)
    return INVALID if problems else 0


def _serving_problems(
    config: QuantizeConfig,
    registry: Registry,
    shapes: dict[str, tuple[int, int]],
    args: argparse.Namespace,
    notes: list[str],
) -> list[str]:
    try:
        platform = registry.select_platform(args.platform)
    except SelectionError as exc:
        return [str(exc)]
    capability = platform.capability() if platform.capability else None
    by_shape: dict[tuple[int, int], list[str]] = {}
    for name, shape in shapes.items():
        by_shape.setdefault(shape, []).append(name)
    if not by_shape:
        by_shape[(0, 0)] = ["every layer"]
    problems = []
    chosen: set[str] = set()
    for (k, n), names in by_shape.items():
        request = KernelRequest(
            platform=platform.name,
            bits=config.bits,
            group_size=config.group_size,
            desc_act=config.desc_act,
            sym=config.sym,
            dtype=args.dtype,
            in_features=k,
            out_features=n,
            capability=capability,
        )
        where = (
            names[0]
            if len(names) == 1
            else f"{names[0]} and {len(names) - 1} more of shape {k}x{n}"
        )
        try:
            chosen.add(registry.select_kernel("linear", request, choice=args.kernel).name)
        except SelectionError as exc:
            serving = [name for name, reason in exc.reasons.items() if reason == "accepts"]
            hint = f"; kernels that can: {', '.join(serving)}" if serving else ""
            problems.append(f"{where}: {exc}{hint}")
    notes.append(
        f"platform {platform.name}; linear kernel(s): {', '.join(sorted(chosen)) or 'none'}"
    )
    return problems


def _report(
    args: argparse.Namespace, config: QuantizeConfig | None, problems: list[str], notes: list[str]
) -> None:
    if args.json:
        print(
            json.dumps(
                {
                    "valid": not problems,
                    "problems": problems,
                    "notes": notes,
                    "config": config.to_dict() if config else None,
                },
                indent=2,
            )
        )
        return
    if problems:
        print_problems(problems)
        return
    print(
        f"valid: {config.bits}-bit, group_size {config.group_size}, "
        f"desc_act={config.desc_act}, sym={config.sym}, format {config.checkpoint_format}"
    )
    for note in notes:
        print(f"  {note}")
