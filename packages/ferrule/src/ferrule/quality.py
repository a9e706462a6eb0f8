"""Perplexity of a model in float and quantized several ways: one table, one protocol.

The protocol is the GPTQ paper's, scaled to a small CPU: calibration windows drawn from one
text, evaluation over the first ``eval_tokens`` tokens of another (tokenized whole, without
special tokens) in non-overlapping windows, every token but each window's first scored.
Quantized checkpoints are kept in ``work_dir`` and reused when the table is made again.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ferrule_core import QuantizeConfig
from ferrule_core.format import holds_checkpoint

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """A row of the table: ``config`` None is the float model itself."""

    name: str
    config: QuantizeConfig | None = None


@dataclass(frozen=True)
class Protocol:
    calibration: Path | None  # None: the quantizer's built-in default
    eval_text: Path
    num_samples: int = 32
    seq_len: int = 512
    eval_tokens: int = 8192
    window: int = 1024
    seed: int = 0


@dataclass(frozen=True)
class Row:
    name: str
    perplexity: float
    tokens: int
    quantize_seconds: float | None
    eval_seconds: float


def asymmetric(bits: int, method: str = "gptq", desc_act: bool = True) -> QuantizeConfig:
    """The reference settings: asymmetric, group size 128, damping 0.01, true-sequential.

    Written as ``gptq_v2`` so that every zero point is the reference's own.
    """
    return QuantizeConfig(
        bits=bits,
        group_size=128,
        sym=False,
        desc_act=desc_act,
        damp_percent=0.01,
        true_sequential=True,
        quant_method=method,
        checkpoint_format="gptq_v2",
    )


FULL_TABLE = (
    Variant("float32"),
    Variant("RTN 4-bit g128", asymmetric(4, "rtn", desc_act=False)),
    Variant("GPTQ 4-bit g128, act-order", asymmetric(4)),
    Variant("GPTQ 4-bit g128", asymmetric(4, desc_act=False)),
    Variant("RTN 3-bit g128", asymmetric(3, "rtn", desc_act=False)),
    Variant("GPTQ 3-bit g128, act-order", asymmetric(3)),
)
SHORT_TABLE = FULL_TABLE[:3]


def quality_table(
    model_dir: Path,
    variants: tuple[Variant, ...],
    protocol: Protocol,
    work_dir: Path,
    *,
    device: str | None = None,
    progress: bool = True,
) -> list[Row]:
    """Quantize (or reuse) each variant into ``work_dir`` and measure its perplexity."""
    import torch
    from transformers import AutoTokenizer

    from ferrule_quant.evaluate import perplexity, tokenize_text
    from ferrule_quant.loading import load_model
    from ferrule_quant.pipeline import CalibrationOptions, quantize_model

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenize_text(
        tokenizer, protocol.eval_text.read_text(encoding="utf-8"), protocol.eval_tokens
    )
    calibration = CalibrationOptions(
        source=protocol.calibration,
        num_samples=protocol.num_samples,
        seq_len=protocol.seq_len,
        seed=protocol.seed,
    )
    rows = []
    for variant in variants:
        folder, quantize_seconds = model_dir, None
        if variant.config is not None:
            folder = checkpoint_folder(work_dir, variant.name)
            if not holds_checkpoint(folder) or _stale(folder, variant.config, protocol):
                start = time.perf_counter()
                quantize_model(
                    model_dir,
                    folder,
                    variant.config,
                    calibration=calibration,
                    device=device,
                    dtype=torch.float32,
                    overwrite=True,
                    progress=progress,
                )
                quantize_seconds = time.perf_counter() - start
                (folder / "ferrule_protocol.json").write_text(
                    json.dumps(_stamp(variant.config, protocol))
                )
        start = time.perf_counter()
        model = load_model(folder, dtype=torch.float32, device=device or "cpu")
        result = perplexity(model, ids, seq_len=protocol.window, progress=progress)
        rows.append(
            Row(
                variant.name,
                result.perplexity,
                result.tokens,
                quantize_seconds,
                time.perf_counter() - start,
            )
        )
        logger.info("%s: perplexity %.4f", variant.name, result.perplexity)
        del model
    return rows


def markdown(
    rows: list[Row],
    protocol: Protocol,
    reference: dict[str, float] | None = None,
    device: str | None = None,
) -> str:
    """The table as Markdown, with the machine and the protocol underneath."""
    head = "| model | perplexity | vs float32 |"
    rule = "| --- | ---: | ---: |"
    if reference:
        head, rule = head + " reference |", rule + " ---: |"
    head, rule = head + " quantize s | eval s |", rule + " ---: | ---: |"
    base = next((r.perplexity for r in rows if r.name == "float32"), None)
    lines = [head, rule]
    for row in rows:
        cells = [
            row.name,
            f"{row.perplexity:.2f}",
            "-" if base is None else f"{row.perplexity / base:.3f}x",
        ]
        if reference:
            ref = reference.get(row.name)
            cells.append("-" if ref is None else f"{ref:.2f}")
        cells += [
            "-" if row.quantize_seconds is None else f"{row.quantize_seconds:.0f}",
            f"{row.eval_seconds:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    calibration = protocol.calibration.name if protocol.calibration else "the built-in default"
    lines.append("")
    lines.append(
        f"Calibration: {protocol.num_samples} windows of {protocol.seq_len} tokens from {calibration} "
        f"(seed {protocol.seed}); evaluation: the first {protocol.eval_tokens} tokens of "
        f"{protocol.eval_text.name}, windows of {protocol.window}, every token but each window's "
        f"first scored ({rows[0].tokens if rows else 0} tokens). Machine: {_machine(device)}."
    )
    return "\n".join(lines)


def save_rows(rows: list[Row], path: Path) -> None:
    path.write_text(json.dumps([asdict(r) for r in rows], indent=2))


def checkpoint_folder(work_dir: Path, name: str) -> Path:
    """Where ``quality_table`` keeps the checkpoint of the variant called ``name``."""
    return work_dir / _slug(name)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def _stamp(config: QuantizeConfig, protocol: Protocol) -> dict[str, Any]:
    return {
        "config": config.to_dict(),
        "protocol": {k: str(v) for k, v in asdict(protocol).items()},
    }


def _stale(folder: Path, config: QuantizeConfig, protocol: Protocol) -> bool:
    stamp = folder / "ferrule_protocol.json"
    return not stamp.is_file() or json.loads(stamp.read_text()) != _stamp(config, protocol)


def _machine(device: str | None) -> str:
    import os

    import torch

    if device and device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, float32"

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, float32 on the CPU"
