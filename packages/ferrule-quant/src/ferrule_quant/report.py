"""What a quantization run reports: per-layer error and time, and the run's totals."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class LayerStats:
    """One quantized linear layer.

    ``rel_error`` is the relative output error on the calibration inputs,
    ``tr(dW H dW^T) / tr(W H W^T)`` with the layer's Hessian ``H``; for a method without
    calibration it is the relative weight error ``|dW| / |W|``.
    """

    name: str
    in_features: int
    out_features: int
    loss: float
    rel_error: float
    damp_percent: float | None
    seconds: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerStats:
        return cls(**data)


@dataclass
class QuantizeReport:
    method: str
    layers: list[LayerStats] = field(default_factory=list)
    seconds: float = 0.0
    resumed_blocks: int = 0
    peak_gpu_bytes: int | None = None
    output: str = ""
    phase_seconds: dict[str, float] = field(default_factory=dict)  # capture, blocks, save

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layers"] = [asdict(layer) for layer in self.layers]
        return data

    def format_table(self) -> str:
        header = ("layer", "shape", "loss", "rel. error", "damp", "s")
        rows = [
            (
                s.name,
                f"{s.in_features}x{s.out_features}",
                f"{s.loss:.4g}",
                f"{s.rel_error:.3e}",
                "-" if s.damp_percent is None else f"{s.damp_percent:g}",
                f"{s.seconds:.2f}",
            )
            for s in self.layers
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = [
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
            for r in [header, *rows]
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        summary = f"{len(self.layers)} layers quantized with {self.method} in {self.seconds:.1f} s"
        if self.resumed_blocks:
            summary += f" ({self.resumed_blocks} blocks resumed from an earlier run)"
        if self.peak_gpu_bytes is not None:
            summary += f"; peak GPU memory {self.peak_gpu_bytes / 2**30:.2f} GiB"
        return "\n".join([*lines, summary])
