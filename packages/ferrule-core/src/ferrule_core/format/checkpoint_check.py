"""Checking a GPTQ state dict against its quantize config, before writing and after reading:
each layer's problems, the bit width the shapes imply, and the messages that list them."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ferrule_core.config import QuantizeConfig
from ferrule_core.errors import FormatError
from ferrule_core.format.checkpoint_common import quantized_layers
from ferrule_core.format.tensors import check_tensors, default_g_idx, num_groups

_MAX_LISTED = 20


def default_layer_g_idx(layer: Mapping[str, Tensor], config: QuantizeConfig) -> Tensor:
    """The default ``arange(K) // group_size`` g_idx for a layer stored without one."""
    in_features = layer["qweight"].shape[0] * 32 // config.bits
    return default_g_idx(in_features, config.group_size, device=layer["qweight"].device)


def layer_problems(tensors: Mapping[str, Tensor], config: QuantizeConfig) -> list[str]:
    """Every problem with the quantized layers of ``tensors``, each naming its layer."""
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


def raise_problems(where: str, problems: list[str]) -> None:
    """Raise :class:`FormatError` listing ``problems`` (the first 20) found in ``where``."""
    if problems:
        shown = problems[:_MAX_LISTED]
        more = len(problems) - len(shown)
        lines = "\n".join(f"  - {p}" for p in shown) + (f"\n  ... and {more} more" if more else "")
        raise FormatError(f"{where}: {len(problems)} problem(s) with the GPTQ tensors:\n{lines}")


def listing(names: list[str]) -> str:
    """``names`` joined for a message, the first 20 and how many more."""
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")
