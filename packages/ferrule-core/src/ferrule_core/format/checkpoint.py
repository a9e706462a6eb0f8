"""GPTQ checkpoint files: a folder of safetensors weights, ``quantize_config.json`` and
``config.json`` (with ``quantization_config``), laid out as AutoGPTQ, GPTQModel, optimum and
vLLM expect (see ``docs/format.md``).

In memory ferrule keeps zero points in ``gptq_v2`` meaning (the true zero point); the files
hold v1 (``z - 1``) when ``checkpoint_format="gptq"``. :func:`save_checkpoint` converts on the
way out and :func:`read_checkpoint` on the way in, so callers never see v1 zeros.

Writing is atomic per folder: every file goes to a temporary name first and is renamed into
place once all are written, ``quantize_config.json`` last, so a folder holding
``quantize_config.json`` is a complete checkpoint. Files ferrule does not write (a resumable
work area such as ``.ferrule-work/``, a README) are left alone.
"""

from __future__ import annotations

import json
import logging
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
from ferrule_core.format.tensors import (
    check_tensors,
    default_g_idx,
    num_groups,
    zeros_v1_to_v2,
    zeros_v2_to_v1,
)

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
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
LAYER_PARTS = ("qweight", "qzeros", "scales", "g_idx", "bias")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_MAX_LISTED = 20
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


# --- writing -------------------------------------------------------------------------


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
    _raise_problems("the tensors to save", _layer_problems(prepared, config))
    for prefix, layer in quantized_layers(prepared).items():
        if "g_idx" not in layer:
            prepared[f"{prefix}.g_idx"] = _default_g_idx(layer, config)
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


# --- reading -------------------------------------------------------------------------


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
    for path, names in _weight_sources(folder, config):
        for name, tensor in _read_safetensors(path, names).items():
            if name in tensors:
                raise FormatError(
                    f"{name} is stored twice in {folder}, the second time in {path.name}"
                )
            tensors[name] = tensor
    _raise_problems(str(folder), _layer_problems(tensors, config))
    for prefix, layer in quantized_layers(tensors).items():
        if "g_idx" not in layer:
            tensors[f"{prefix}.g_idx"] = _default_g_idx(layer, config)
        elif layer["g_idx"].dtype != torch.int32:
            tensors[f"{prefix}.g_idx"] = layer["g_idx"].to(torch.int32)
        if config.checkpoint_format == "gptq":
            tensors[f"{prefix}.qzeros"] = zeros_v1_to_v2(layer["qzeros"], config.bits)
    return tensors, config


def _weight_sources(folder: Path, config: QuantizeConfig) -> list[tuple[Path, list[str] | None]]:
    """The weight files to read, each with the tensor names to take from it (None: all)."""
    index = folder / INDEX_FILE
    if index.is_file():
        return _index_sources(folder, index)
    candidates = [folder / SINGLE_FILE]
    base = config.extras.get("model_file_base_name")
    if isinstance(base, str) and base:
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
                    f"{INDEX_FILE} maps {_listing(absent)} to {path.name}, but {path.name} does "
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


# --- checking ------------------------------------------------------------------------


def _default_g_idx(layer: Mapping[str, Tensor], config: QuantizeConfig) -> Tensor:
    in_features = layer["qweight"].shape[0] * 32 // config.bits
    return default_g_idx(in_features, config.group_size, device=layer["qweight"].device)


def _layer_problems(tensors: Mapping[str, Tensor], config: QuantizeConfig) -> list[str]:
    layers = quantized_layers(tensors)
    problems = []
    for name in tensors:
        prefix, _, part = name.rpartition(".")
        if part == "qzeros" and prefix not in layers:
            problems.append(f"{prefix}.qweight is missing ({prefix}.qzeros is there)")
    for prefix, layer in layers.items():
        problems.extend(
            f"{prefix}: {p}" if p[0] != "." else prefix + p for p in _one_layer(layer, config)
        )
    return problems


def _one_layer(layer: Mapping[str, Tensor], config: QuantizeConfig) -> list[str]:
    """What is wrong with one layer's tensors (``".part is missing"`` or a sentence)."""
    missing = [f".{p} is missing" for p in ("qzeros", "scales") if p not in layer]
    if "g_idx" not in layer and config.desc_act:
        missing.append(".g_idx is missing, which desc_act=true checkpoints need")
    if missing:
        return missing
    bits, group_size = config.bits, config.group_size
    qweight, qzeros, scales = layer["qweight"], layer["qzeros"], layer["scales"]
    g_idx = layer.get("g_idx")
    if qweight.dim() != 2 or qweight.dtype != torch.int32 or scales.dim() != 2:
        return [
            f"qweight has shape {tuple(qweight.shape)} dtype {qweight.dtype} and scales shape "
            f"{tuple(scales.shape)}; expected an int32 [K * bits / 32, N] qweight and [G, N] scales"
        ]
    words, out_features = qweight.shape
    implied = _implied_bits(words, g_idx, qzeros, out_features)
    if implied not in (None, bits) or words * 32 % bits:
        shapes = f"qweight {tuple(qweight.shape)}, qzeros {tuple(qzeros.shape)}" + (
            f", g_idx of {g_idx.numel()} rows" if g_idx is not None else ""
        )
        says = f"the quantize config says bits={bits}"
        if implied is None:
            return [
                f"{says}, but {words} qweight rows cannot hold whole {bits}-bit codes ({shapes})"
            ]
        return [f"{says}, but the tensors imply bits={implied} ({shapes})"]
    in_features = words * 32 // bits
    if g_idx is not None and g_idx.dim() == 1 and g_idx.numel() != in_features:
        return [
            f"g_idx has {g_idx.numel()} rows but qweight {tuple(qweight.shape)} at bits={bits} "
            f"holds in_features={in_features}"
        ]
    if g_idx is not None and g_idx.dtype == torch.int64:
        g_idx = g_idx.to(torch.int32)
    groups = num_groups(in_features, group_size)
    if scales.shape[0] != groups:
        rows = scales.shape[0]
        guess = (
            -1 if rows == 1 else in_features // rows if rows and in_features % rows == 0 else None
        )
        hint = f" (group_size={guess} would match)" if guess is not None else ""
        return [
            f"the quantize config says group_size={group_size}, which gives {groups} groups for "
            f"in_features={in_features}, but scales has {rows} rows{hint}"
        ]
    if g_idx is None:
        g_idx = default_g_idx(in_features, group_size, device=qweight.device)
    problems = []
    try:
        check_tensors(qweight, qzeros, scales, g_idx, bits, in_features, out_features, group_size)
    except FormatError as err:
        problems.append(str(err))
    bias = layer.get("bias")
    if bias is not None and (
        tuple(bias.shape) != (out_features,) or not bias.dtype.is_floating_point
    ):
        problems.append(
            f"bias has shape {tuple(bias.shape)} dtype {bias.dtype}, expected a floating "
            f"[{out_features}] tensor"
        )
    return problems


def _implied_bits(
    words: int, g_idx: Tensor | None, qzeros: Tensor, out_features: int
) -> int | None:
    """The bit width the tensor shapes agree on, or None when they do not say."""
    if g_idx is not None and g_idx.dim() == 1 and g_idx.numel() and words * 32 % g_idx.numel() == 0:
        return words * 32 // g_idx.numel()
    if qzeros.dim() == 2 and out_features and qzeros.shape[1] * 32 % out_features == 0:
        return qzeros.shape[1] * 32 // out_features
    return None


def _raise_problems(where: str, problems: list[str]) -> None:
    if problems:
        shown = problems[:_MAX_LISTED]
        more = len(problems) - len(shown)
        lines = "\n".join(f"  - {p}" for p in shown) + (f"\n  ... and {more} more" if more else "")
        raise FormatError(f"{where}: {len(problems)} problem(s) with the GPTQ tensors:\n{lines}")


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")
