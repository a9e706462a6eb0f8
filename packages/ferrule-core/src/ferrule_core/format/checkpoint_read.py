"""Reading GPTQ checkpoints: :func:`read_checkpoint`, finding the weight files (an index and
its shards, a single file, AutoGPTQ's names) and reading them as safetensors.

The files hold v1 zero points (``z - 1``) when ``checkpoint_format="gptq"``;
:func:`read_checkpoint` converts them to ferrule's in-memory ``gptq_v2`` meaning, so callers
never see v1 zeros.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor

from ferrule_core.config import QUANTIZE_CONFIG_FILE, QuantizeConfig
from ferrule_core.errors import FormatError
from ferrule_core.format.checkpoint_check import (
    default_layer_g_idx,
    layer_problems,
    listing,
    raise_problems,
)
from ferrule_core.format.checkpoint_common import INDEX_FILE, SINGLE_FILE, quantized_layers
from ferrule_core.format.tensors import zeros_v1_to_v2

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def read_checkpoint(folder: str | os.PathLike[str]) -> tuple[dict[str, Tensor], QuantizeConfig]:
    """Read a GPTQ checkpoint: ``(tensors, config)`` with every layer checked.

    The returned ``qzeros`` are in ``gptq_v2`` meaning whatever the file holds, and layers
    without ``g_idx`` (old checkpoints) get the default ``arange(K) // group_size``.
    ``config.checkpoint_format`` tells what the files hold. Weights are found as
    ``model.safetensors.index.json`` and its shards, else ``model.safetensors``, else
    AutoGPTQ's ``<model_file_base_name>.safetensors``, else the folder's only
    ``.safetensors`` file. Pickle weights (``.bin``, ``.pt``) are refused.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    config = QuantizeConfig.load(folder)
    tensors: dict[str, Tensor] = {}
    base = config.extras.get("model_file_base_name")
    for path, names in _weight_sources(folder, base if isinstance(base, str) else None):
        for name, tensor in _read_safetensors(path, names).items():
            if name in tensors:
                raise FormatError(
                    f"{name} is stored twice in {folder}, the second time in {path.name}"
                )
            tensors[name] = tensor
    raise_problems(str(folder), layer_problems(tensors, config))
    for prefix, layer in quantized_layers(tensors).items():
        if "g_idx" not in layer:
            tensors[f"{prefix}.g_idx"] = default_layer_g_idx(layer, config)
        elif layer["g_idx"].dtype != torch.int32:
            tensors[f"{prefix}.g_idx"] = layer["g_idx"].to(torch.int32)
        if config.checkpoint_format == "gptq":
            tensors[f"{prefix}.qzeros"] = zeros_v1_to_v2(layer["qzeros"], config.bits)
    return tensors, config


def read_weights(folder: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Every tensor of a model folder's safetensors weights (an index and its shards, or one
    file), as stored: no checking against a quantization config, no conversion.

    This is how a float (unquantized) model is read; :func:`read_checkpoint` reads GPTQ ones.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    tensors: dict[str, Tensor] = {}
    for path, names in _weight_sources(folder, None):
        tensors.update(_read_safetensors(path, names))
    return tensors


def _weight_sources(folder: Path, base: str | None) -> list[tuple[Path, list[str] | None]]:
    """The weight files to read, each with the tensor names to take from it (None: all)."""
    index = folder / INDEX_FILE
    if index.is_file():
        return _index_sources(folder, index)
    candidates = [folder / SINGLE_FILE]
    if base:
        candidates.append(folder / f"{base}.safetensors")
    for path in candidates:
        if path.is_file():
            return [(path, None)]
    found = sorted(p.name for p in folder.glob("*.safetensors") if p.is_file())
    if len(found) == 1:
        return [(folder / found[0], None)]
    if found:
        raise FormatError(
            f"{folder} holds several .safetensors files ({', '.join(found)}) but no {INDEX_FILE} "
            f"and no {SINGLE_FILE}: cannot tell which hold the weights; add an index or set "
            f"model_file_base_name in {QUANTIZE_CONFIG_FILE}"
        )
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise FormatError(
            f"{folder} holds its weights only as pickle files ({', '.join(pickles)}); ferrule "
            "reads safetensors only, because unpickling can run arbitrary code. Convert them "
            "with a tool you trust (e.g. load with torch.load(weights_only=True) and save with "
            "safetensors.torch.save_file)"
        )
    raise FileNotFoundError(
        f"{folder} holds no weights: expected {SINGLE_FILE}, or {INDEX_FILE} with its shards"
        + (f", or {base}.safetensors (model_file_base_name)" if base else "")
    )


def _index_sources(folder: Path, index: Path) -> list[tuple[Path, list[str] | None]]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (ValueError, KeyError, TypeError) as err:
        raise FormatError(
            f"{index} is not a valid safetensors index ({err!r}); it must be JSON with a "
            '"weight_map" object mapping tensor names to shard files'
        ) from err
    by_file: dict[str, list[str]] = {}
    for name, file in weight_map.items():
        by_file.setdefault(file, []).append(name)
    missing = [f for f in by_file if not (folder / f).is_file()]
    if missing:
        details = "; ".join(
            f"{f} (holding {len(by_file[f])} tensors, e.g. {by_file[f][0]})" for f in missing
        )
        raise FormatError(
            f"{index.name} in {folder} names shards that are missing: {details}. The checkpoint "
            "is incomplete: copy or download the missing files"
        )
    return [(folder / file, names) for file, names in by_file.items()]


def _read_safetensors(path: Path, names: list[str] | None) -> dict[str, Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            available = set(handle.keys())
            if names is None:
                names = list(handle.keys())
            absent = [name for name in names if name not in available]
            if absent:
                raise FormatError(
                    f"{INDEX_FILE} maps {listing(absent)} to {path.name}, but {path.name} does "
                    "not hold them: the index and the shard disagree"
                )
            return {name: handle.get_tensor(name) for name in names}
    except FormatError:
        raise
    except Exception as err:  # safetensors raises its own SafetensorError, or OSError
        raise FormatError(
            f"{path} cannot be read as safetensors ({err}); the file looks truncated or "
            "corrupt (an interrupted download or copy?): fetch or save it again"
        ) from err
