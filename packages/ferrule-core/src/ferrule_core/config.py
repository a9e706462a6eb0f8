"""``QuantizeConfig``: what to quantize to, validated before any compute is spent.

It reads and writes ``quantize_config.json`` (and the ``quantization_config`` block of
``config.json``) including the key names other tools write: AutoGPTQ and optimum use
``desc_act``/``damp_percent``; GPTQ-for-LLaMa used ``wbits``/``groupsize``/``act_order``;
GPTQModel writes ``format`` for ``checkpoint_format``. Keys ferrule does not use are kept
in ``extras`` and written back unchanged.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ferrule_core.errors import ConfigError

SUPPORTED_BITS = (2, 3, 4, 8)
CHECKPOINT_FORMATS = ("gptq", "gptq_v2")
COMMON_GROUP_SIZES = (32, 64, 128)
QUANTIZE_CONFIG_FILE = "quantize_config.json"

# Names other tools write for our fields.
_SYNONYMS = {
    "wbits": "bits",
    "w_bit": "bits",
    "groupsize": "group_size",
    "q_group_size": "group_size",
    "act_order": "desc_act",
    "damp": "damp_percent",
    "format": "checkpoint_format",
}
# Formats other tools write that ferrule cannot read, with what to do instead.
_FOREIGN_FORMATS = {
    "marlin": "a Marlin-repacked checkpoint; re-export it in the plain `gptq` format",
    "bitblas": "a BitBLAS-repacked checkpoint; re-export it in the plain `gptq` format",
    "gptq_marlin": "a Marlin-repacked checkpoint; re-export it in the plain `gptq` format",
}


@dataclass(frozen=True)
class QuantizeConfig:
    """GPTQ settings.

    ``bits``: 2, 3, 4 or 8 bits per weight. ``group_size``: input rows that share a
    scale and zero point, or -1 for one group per output channel. ``desc_act``: quantize
    columns in order of decreasing Hessian diagonal (act-order). ``static_groups``: with
    act-order, fix each group's grid before reordering. ``sym``: symmetric grid (zero
    point in the middle). ``damp_percent``: fraction of the mean Hessian diagonal added
    before the Cholesky factorisation. ``true_sequential``: quantize a block's sub-layers
    group after group, each seeing the previous ones already quantized.
    ``checkpoint_format``: ``gptq`` (v1, stores zero - 1, what most engines read) or
    ``gptq_v2`` (stores the zero point itself; exact for asymmetric grids).
    """

    bits: int = 4
    group_size: int = 128
    desc_act: bool = False
    static_groups: bool = False
    sym: bool = True
    damp_percent: float = 0.01
    true_sequential: bool = True
    checkpoint_format: str = "gptq"
    quant_method: str = "gptq"
    extras: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(problems)

    @property
    def min_zero(self) -> int:
        """The smallest zero point the grids may use: 1 for asymmetric v1 checkpoints, else 0.

        v1 (``gptq``) stores ``zero - 1``, and engines read it back as ``stored + 1``
        without wrapping, so a zero point of 0 would come back as ``2**bits``. Asymmetric
        grids written as v1 therefore keep their zero point at 1 or above (a group whose
        values are all >= 0 gets a slightly wider scale instead); ``gptq_v2`` has no limit.
        """
        return 1 if (not self.sym and self.checkpoint_format == "gptq") else 0

    def problems(self) -> list[str]:
        """Every rule this config breaks, each with the value and a valid suggestion."""
        found = []
        if isinstance(self.bits, bool) or self.bits not in SUPPORTED_BITS:
            found.append(
                f"bits={self.bits!r} is not supported: GPTQ packs "
                f"{', '.join(map(str, SUPPORTED_BITS))} bits per weight; try bits=4"
            )
        if (
            isinstance(self.group_size, bool)
            or not isinstance(self.group_size, int)
            or (self.group_size != -1 and self.group_size <= 0)
        ):
            found.append(
                f"group_size={self.group_size!r} is invalid: use -1 (one group per output "
                f"channel) or a positive size such as {', '.join(map(str, COMMON_GROUP_SIZES))}"
            )
        if isinstance(self.damp_percent, bool) or not isinstance(self.damp_percent, int | float):
            found.append(f"damp_percent={self.damp_percent!r} must be a number; try 0.01")
        elif not 0 < self.damp_percent < 1:
            found.append(
                f"damp_percent={self.damp_percent!r} is out of range: it must lie strictly "
                "between 0 and 1; try 0.01 (raise it, e.g. to 0.1, if the Hessian is ill-conditioned)"
            )
        if self.checkpoint_format in _FOREIGN_FORMATS:
            found.append(
                f"checkpoint_format={self.checkpoint_format!r} is "
                f"{_FOREIGN_FORMATS[self.checkpoint_format]}"
            )
        elif self.checkpoint_format not in CHECKPOINT_FORMATS:
            found.append(
                f"checkpoint_format={self.checkpoint_format!r} is unknown: use 'gptq' (v1, "
                "read by most engines) or 'gptq_v2' (exact for asymmetric grids)"
            )
        if self.quant_method not in ("gptq", "rtn"):
            found.append(
                f"quant_method={self.quant_method!r} is not a GPTQ-format method: "
                "use 'gptq' or 'rtn'"
            )
        for name in ("desc_act", "static_groups", "sym", "true_sequential"):
            if not isinstance(getattr(self, name), bool):
                found.append(f"{name}={getattr(self, name)!r} must be true or false")
        return found

    def layer_problems(self, name: str, in_features: int, out_features: int) -> list[str]:
        """What stops a linear layer of this shape from being packed with this config."""
        found = []
        if self.group_size > 0 and in_features % self.group_size:
            found.append(
                f"{name}: in_features={in_features} is not a multiple of "
                f"group_size={self.group_size}; use a group size that divides it "
                f"(e.g. {_divisor_suggestion(in_features)}) or -1"
            )
        found.extend(packing_problems(name, in_features, out_features, self.bits))
        return found

    # --- reading and writing -------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "extras"}
        return {**self.extras, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantizeConfig:
        """Build from a ``quantize_config.json`` or ``quantization_config`` dict of any tool."""
        known = {f.name for f in fields(cls)} - {"extras"}
        values: dict[str, Any] = {}
        extras: dict[str, Any] = {}
        for key, value in data.items():
            target = _SYNONYMS.get(key, key)
            if target in known and target not in values:
                values[target] = value
            else:
                extras[key] = value
        # Older tools mark formats with booleans instead of a name.
        if extras.get("is_marlin_format"):
            values["checkpoint_format"] = "marlin"
        quant_method = values.get("quant_method", "gptq")
        if isinstance(quant_method, str):
            values["quant_method"] = quant_method.lower()
        return cls(**values, extras=extras)

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``quantize_config.json`` atomically (temporary name, then rename)."""
        path = Path(folder) / QUANTIZE_CONFIG_FILE
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> QuantizeConfig:
        """Read ``quantize_config.json``, else ``config.json``'s ``quantization_config``."""
        folder = Path(folder)
        path = folder / QUANTIZE_CONFIG_FILE
        if path.is_file():
            return cls.from_dict(json.loads(path.read_text()))
        config_path = folder / "config.json"
        if config_path.is_file():
            block = json.loads(config_path.read_text()).get("quantization_config")
            if block:
                return cls.from_dict(block)
        raise FileNotFoundError(
            f"{folder} holds no {QUANTIZE_CONFIG_FILE} and no quantization_config in config.json"
        )


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def packing_problems(name: str, in_features: int, out_features: int, bits: int) -> list[str]:
    """Why a ``[out_features, in_features]`` weight cannot be packed at ``bits`` (or nothing).

    Codes are packed into 32-bit words along both dimensions (``qweight`` along the
    input, ``qzeros`` along the output), so each must fill whole words.
    """
    found = []
    for dim, size in (("in_features", in_features), ("out_features", out_features)):
        if size <= 0 or size * bits % 32:
            multiple = 32 // math.gcd(bits, 32)
            found.append(
                f"{name}: {dim}={size} cannot be packed at {bits} bits: it must be a positive "
                f"multiple of {multiple} so that the codes fill whole 32-bit words"
            )
    return found


def _divisor_suggestion(in_features: int) -> int | str:
    for size in (128, 64, 32, 16):
        if in_features % size == 0:
            return size
    return -1
