"""``ferrule plugins``: what is installed, what each plugin registers, the current platform."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ferrule_core import load_plugins
from ferrule_core.registry import Registry

FAMILIES = ("architectures", "kernels", "quant_methods", "schedulers", "platforms")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plugins",
        help="list installed plugins and what they register",
        description="List installed plugins with versions, what each registers in every "
        "hook family with its capabilities, and the platform ferrule would use here.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    registry = load_plugins()
    report = registry.to_dict()
    report["platform"] = _current_platform(registry)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(render(report))
    return 0


def _current_platform(registry: Registry) -> dict[str, Any]:
    reasons = registry.platform_reasons()
    usable = [name for name, reason in reasons.items() if reason is None]
    return {
        "selected": usable[0] if usable else None,
        "candidates": {name: reason or "usable" for name, reason in reasons.items()},
    }


def render(report: dict[str, Any]) -> str:
    lines = ["plugins:"]
    for p in report["plugins"]:
        dist = f"{p['distribution']} {p['version']}" if p["distribution"] else "(in-process)"
        lines.append(f"  {p['name']:<12} {dist:<24} {p['module']}")
    for f in report["failures"]:
        lines.append(f"  {f['name']:<12} FAILED: {f['error']}")
    for family in FAMILIES:
        records = report[family]
        title = family.replace("_", " ")
        if not records:
            lines.append(f"{title}: none registered")
            continue
        lines.append(f"{title}:")
        for record in records:
            lines.append(f"  {record['name']}  (from {record['plugin']})")
            details = _capabilities(record)
            if details:
                lines.append(f"      {details}")
            if record.get("description"):
                lines.append(f"      {record['description']}")
    platform = report["platform"]
    lines.append(f"platform: {platform['selected'] or 'none usable'}")
    for name, reason in platform["candidates"].items():
        lines.append(f"  {name}: {reason}")
    return "\n".join(lines)


def _capabilities(record: dict[str, Any]) -> str:
    skip = {"name", "plugin", "description"}
    parts = []
    for key, value in record.items():
        if key in skip or value is None:
            continue
        if isinstance(value, list):
            value = ",".join(map(str, value)) if value else "-"
        parts.append(f"{key}={value}")
    return "  ".join(parts)
