"""Writing GPTQ checkpoints: :func:`save_checkpoint` and its sharding, staging and copies.

In memory ferrule keeps zero points in ``gptq_v2`` meaning (the true zero point); the files
hold v1 (``z - 1``) when ``checkpoint_format="gptq"``, so :func:`save_checkpoint` converts on
the way out.

Writing is atomic per folder: every file goes to a temporary name first and is renamed into
place once all are written, ``quantize_config.json`` last, so a folder holding
``quantize_config.json`` is a complete checkpoint. Files ferrule does not write (a resumable
work area such as ``.ferrule-work/``, a README) are left alone.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ferrule_core.config import QUANTIZE_CONFIG_FILE, QuantizeConfig
from ferrule_core.errors import FormatError
from ferrule_core.format.checkpoint_check import (
    default_layer_g_idx,
    layer_problems,
    raise_problems,
)
from ferrule_core.format.checkpoint_common import (
    CONFIG_FILE,
    INDEX_FILE,
    SINGLE_FILE,
    holds_checkpoint,
    parse_size,
    quantized_layers,
)
from ferrule_core.format.tensors import zeros_v2_to_v1

SHARD_PATTERN = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
# Copied from the original model folder when present: tokenizer, chat template, processor,
# generation defaults. Everything a server needs besides the weights.
COPIED_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
    "generation_config.json",
)


def save_checkpoint(
    folder: str | os.PathLike[str],
    tensors: Mapping[str, Tensor],
    config: QuantizeConfig,
    *,
    model_config: Mapping[str, Any],
    source: str | os.PathLike[str] | None = None,
    max_shard_size: int | str = "4GB",
    overwrite: bool = False,
) -> Path:
    """Write a GPTQ checkpoint of the state dict ``tensors`` into ``folder``; return the folder.

    ``tensors`` holds quantized layers as ``<module>.qweight/.qzeros/.scales/.g_idx`` (and
    ``.bias``) with ``gptq_v2`` zeros, and every other tensor of the model as is.
    ``model_config`` is the model's ``config.json`` content (a mapping or a transformers
    config); ``quantization_config`` is added to it. ``source``, the original model's folder,
    gives the tokenizer and generation files (:data:`COPIED_FILES`, those that exist).
    Weights past ``max_shard_size`` bytes (an int or ``"4GB"``, ``"500MiB"``) are sharded
    as transformers does, with ``model.safetensors.index.json``.

    Raises :class:`FileExistsError` when ``folder`` holds a checkpoint and not ``overwrite``,
    and :class:`FormatError` when a layer's tensors do not match ``config`` or, for
    ``checkpoint_format="gptq"``, have zero points of 0 that v1 cannot store.
    """
    folder = Path(folder)
    limit = parse_size(max_shard_size)
    if not overwrite and holds_checkpoint(folder):
        raise FileExistsError(
            f"{folder} already holds a GPTQ checkpoint; pass overwrite=True to replace it "
            "(files that are not part of a checkpoint stay), or choose another folder"
        )
    copies = _files_to_copy(source, folder)
    on_disk = _file_tensors(tensors, config)
    shards = _plan_shards(on_disk, limit)
    quantize_dict = _quantize_dict(config)
    model_dict = _model_dict(model_config)
    model_dict["quantization_config"] = quantize_dict

    folder.mkdir(parents=True, exist_ok=True)
    with _staging(folder) as stage:
        if len(shards) == 1:
            names = {SINGLE_FILE: shards[0]}
        else:
            names = {
                f"model-{i:05d}-of-{len(shards):05d}.safetensors": shard
                for i, shard in enumerate(shards, 1)
            }
        for name, shard in names.items():
            _write_safetensors(stage(name), {key: on_disk[key] for key in shard})
        if len(names) > 1:
            weight_map = {key: name for name, shard in names.items() for key in shard}
            total = sum(_nbytes(t) for t in on_disk.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            _write_json(stage(INDEX_FILE), index)
        for path in copies:
            shutil.copyfile(path, stage(path.name))
        _write_json(stage(CONFIG_FILE), model_dict)
        _write_json(stage(QUANTIZE_CONFIG_FILE), quantize_dict)
        written = {*names, INDEX_FILE} if len(names) > 1 else set(names)
        stale = _weight_files_of(folder) - written
        # Unmark the old checkpoint first: a crash from here on leaves an incomplete folder.
        (folder / QUANTIZE_CONFIG_FILE).unlink(missing_ok=True)
        for name in stale:
            (folder / name).unlink(missing_ok=True)
    return folder


def _files_to_copy(source: str | os.PathLike[str] | None, folder: Path) -> list[Path]:
    if source is None:
        return []
    source = Path(source)
    if not source.is_dir():
        raise NotADirectoryError(
            f"source={str(source)!r} is not a folder: pass the local folder of the original "
            "model (for a Hub model, the folder huggingface_hub.snapshot_download returns)"
        )
    if folder.exists() and source.resolve() == folder.resolve():
        raise ValueError(
            f"source and folder are both {folder}: saving there would overwrite the original "
            "model; choose another folder for the checkpoint"
        )
    return [source / name for name in COPIED_FILES if (source / name).is_file()]


def _quantize_dict(config: QuantizeConfig) -> dict[str, Any]:
    data = config.to_dict()
    data["quant_method"] = "gptq"  # the file format; other tools know no "rtn" method
    if "model_file_base_name" in data:  # the weights are not under an old AutoGPTQ name
        data["model_file_base_name"] = "model"
    return data


def _model_dict(model_config: Any) -> dict[str, Any]:
    if hasattr(model_config, "to_dict"):  # a transformers PretrainedConfig
        model_config = model_config.to_dict()
    if not isinstance(model_config, Mapping):
        raise TypeError(
            f"model_config must be a mapping (the model's config.json) or a transformers "
            f"config, got {type(model_config).__name__}"
        )
    return dict(model_config)


def _file_tensors(tensors: Mapping[str, Tensor], config: QuantizeConfig) -> dict[str, Tensor]:
    """Validate ``tensors`` against ``config`` and give the tensors as the files hold them."""
    prepared = dict(tensors)
    for name, tensor in prepared.items():
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} is a {type(tensor).__name__}, not a torch.Tensor")
    raise_problems("the tensors to save", layer_problems(prepared, config))
    for prefix, layer in quantized_layers(prepared).items():
        if "g_idx" not in layer:
            prepared[f"{prefix}.g_idx"] = default_layer_g_idx(layer, config)
        elif layer["g_idx"].dtype != torch.int32:
            prepared[f"{prefix}.g_idx"] = layer["g_idx"].to(torch.int32)
        if config.checkpoint_format == "gptq":
            try:
                qzeros = zeros_v2_to_v1(layer["qzeros"].detach().cpu(), config.bits)
            except FormatError as err:
                raise FormatError(f"{prefix}.qzeros: {err}") from err
            prepared[f"{prefix}.qzeros"] = qzeros
    return prepared


def _plan_shards(tensors: Mapping[str, Tensor], limit: int) -> list[list[str]]:
    """Split names in order into shards of at most ``limit`` bytes (a larger tensor alone)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, tensor in tensors.items():
        nbytes = _nbytes(tensor)
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _nbytes(tensor: Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _write_safetensors(path: Path, tensors: Mapping[str, Tensor]) -> None:
    from safetensors.torch import save_file

    ready: dict[str, Tensor] = {}
    storages: set[int] = set()
    for name, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in storages:  # tied weights or views of one buffer: safetensors refuses
            tensor = tensor.clone()
        elif pointer:
            storages.add(pointer)
        ready[name] = tensor
    save_file(ready, str(path), metadata={"format": "pt"})
    path.chmod(0o644)  # safetensors creates private (0600) files; a checkpoint is for sharing
    _fsync(path)


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True, default=_json_default)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    raise TypeError(f"{value!r} ({type(value).__name__}) cannot be written to JSON")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _staging(folder: Path) -> Iterator[Any]:
    """Give ``stage(name)``, a temporary path in ``folder`` for the file ``name``.

    On success the staged files are renamed to their names in order of staging, after the
    body's own clean-up, so the last staged file (``quantize_config.json``) lands last. On
    any exception every temporary file is removed.
    """
    staged: list[tuple[Path, Path]] = []

    def stage(name: str) -> Path:
        # Not mkstemp: its files are private (0600); these get the usual umask permissions.
        tmp = folder / f".{name}.{secrets.token_hex(8)}.tmp"
        staged.append((tmp, folder / name))
        return tmp

    try:
        yield stage
        while staged:
            tmp, final = staged[0]
            os.replace(tmp, final)
            staged.pop(0)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def _weight_files_of(folder: Path) -> set[str]:
    """Names of the weight files an earlier checkpoint in ``folder`` may have left."""
    names = {INDEX_FILE, SINGLE_FILE}
    names.update(
        p.name for p in folder.glob("model-*.safetensors") if SHARD_PATTERN.fullmatch(p.name)
    )
    try:
        base = json.loads((folder / QUANTIZE_CONFIG_FILE).read_text()).get("model_file_base_name")
    except (OSError, ValueError, AttributeError):
        base = None
    if isinstance(base, str) and base and "/" not in base:
        names.add(f"{base}.safetensors")
    return {name for name in names if (folder / name).is_file()}
