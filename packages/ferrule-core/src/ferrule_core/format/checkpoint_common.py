"""What writing and reading GPTQ checkpoints share: the file names, grouping a state dict's
tensors by quantized layer, telling whether a folder holds a checkpoint, and shard sizes."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from ferrule_core.config import QUANTIZE_CONFIG_FILE

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
LAYER_PARTS = ("qweight", "qzeros", "scales", "g_idx", "bias")
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def quantized_layers(tensors: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Group a state dict's GPTQ tensors by layer: ``{prefix: {"qweight": ..., ...}}``.

    A layer is a prefix with a ``.qweight``; its ``qzeros``, ``scales``, ``g_idx`` and ``bias``
    are included when present.
    """
    layers = {}
    for name in tensors:
        if name.endswith(".qweight"):
            prefix = name.removesuffix(".qweight")
            parts = ((part, f"{prefix}.{part}") for part in LAYER_PARTS)
            layers[prefix] = {part: tensors[key] for part, key in parts if key in tensors}
    return layers


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as ``"4GB"`` (10**9) or ``"500MiB"`` (2**20)."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(size))
        unit = match and _SIZE_UNITS.get(match.group(2).upper())
        if not match or unit is None:
            raise ValueError(
                f"max_shard_size={size!r} is not a size: use bytes (an int) or a string "
                "such as '4GB', '500MB' or '2GiB'"
            )
        value = int(float(match.group(1)) * unit)
    if value <= 0:
        raise ValueError(f"max_shard_size={size!r} must be positive, e.g. '4GB'")
    return value


def holds_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` holds a quantized checkpoint (ours or another tool's)."""
    if (folder / QUANTIZE_CONFIG_FILE).is_file():
        return True
    try:
        return bool(json.loads((folder / CONFIG_FILE).read_text()).get("quantization_config"))
    except (OSError, ValueError, AttributeError):
        return False
