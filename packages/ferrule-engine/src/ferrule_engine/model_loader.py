"""Building an engine model from a model folder: float or GPTQ, by the architecture plugins.

The folder's ``config.json`` names a ``model_type``; the installed plugin that handles it
names its engine model (``ArchitectureSpec.engine_model``, ``"module:Attribute"``), which is
called as ``Attribute(config, ctx)``. A folder with a ``quantize_config.json`` (or a
``quantization_config`` in ``config.json``) is a GPTQ checkpoint: it is read and checked by
the core's reader, and the layers that hold GPTQ tensors are built as ``QuantLinear``.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ferrule_core.errors import ConfigError, NotRegisteredError
from ferrule_core.format import holds_checkpoint, quantized_layers, read_checkpoint, read_weights
from ferrule_core.registry import Registry
from ferrule_engine.layers.context import ModelContext

logger = logging.getLogger("ferrule.engine")

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass
class LoadedModel:
    """An engine model ready to run, with what the engine needs to know about it."""

    model: Any
    config: Any
    context: ModelContext
    quantized: bool
    architecture: str


def load_engine_model(
    folder: str | os.PathLike[str],
    *,
    registry: Registry,
    device: torch.device,
    dtype: str | torch.dtype = "auto",
    linear_kernel: str | None = None,
    attention_kernel: str | None = None,
    trust_remote_code: bool = False,
    load_format: str = "auto",
) -> LoadedModel:
    """Read ``folder`` and return its engine model on ``device`` in ``dtype``.

    ``dtype="auto"`` takes the checkpoint's float dtype on GPUs and float32 on the CPU for
    float models; GPTQ models on the CPU run in bfloat16, which the CPU int4/int8 kernels take.
    ``load_format="dummy"`` reads no weights and fills them with random values (for speed
    measurements; see :mod:`ferrule_engine.dummy_weights`).
    """
    from transformers import AutoConfig

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a model folder: it has no config.json (expected a Hugging Face "
            "model saved with save_pretrained, or a ferrule quantized checkpoint)"
        )
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    spec = registry.architecture_for(config.model_type)
    if not spec.engine_model:
        raise NotRegisteredError(
            f"architecture {spec.name!r} (plugin {spec.plugin!r}) handles model_type "
            f"{config.model_type!r} for quantization only: it names no engine model, so "
            "ferrule cannot serve it yet"
        )
    build = _resolve(spec.engine_model)
    quantized = holds_checkpoint(folder)
    dummy = load_format == "dummy"
    if dummy:
        from ferrule_core.config import QuantizeConfig
        from ferrule_engine.dummy_weights import quantized_module_names

        tensors = {}
        quant = QuantizeConfig.load(folder) if quantized else None
        layers = quantized_module_names(spec, config) if quantized else frozenset()
    elif quantized:
        tensors, quant = read_checkpoint(folder)
        layers = frozenset(quantized_layers(tensors))
    else:
        tensors, quant, layers = read_weights(folder), None, frozenset()
    torch_dtype = resolve_dtype(dtype, config, device, quantized)
    ctx = ModelContext(
        dtype=torch_dtype,
        device=device,
        quant=quant,
        quantized=layers,
        registry=registry,
        linear_kernel=linear_kernel,
        attention_kernel=attention_kernel,
    )
    with torch.device(device):
        model = build(config, ctx)
    if dummy:
        from ferrule_engine.dummy_weights import fill_dummy_weights

        model.to(device)
        fill_dummy_weights(model)
    else:
        model.load_weights(tensors.items())
    model.to(device)
    model.merge_projections()
    model.fold_input_orders()
    model.eval()
    logger.info(
        "loaded %s (%s, %s%s) on %s",
        folder,
        config.model_type,
        str(torch_dtype).removeprefix("torch."),
        f", GPTQ {quant.bits}-bit" if quant is not None else "",
        device,
    )
    return LoadedModel(model, config, ctx, quantized, spec.name)


def resolve_dtype(
    dtype: str | torch.dtype, config: Any, device: torch.device, quantized: bool
) -> torch.dtype:
    """The activation dtype for ``dtype`` (a name, ``"auto"`` or a torch dtype)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ConfigError([f"dtype={dtype} is not supported: use one of {', '.join(DTYPES)}"])
        return dtype
    if dtype != "auto":
        try:
            return DTYPES[str(dtype)]
        except KeyError:
            raise ConfigError(
                [f"dtype={dtype!r} is not supported: use auto or one of {', '.join(DTYPES)}"]
            ) from None
    if device.type == "cpu":
        return torch.bfloat16 if quantized else torch.float32
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(stored, str):
        stored = DTYPES.get(stored)
    return stored if stored in (torch.float16, torch.bfloat16) else torch.float16


def _resolve(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    if not attribute:
        raise NotRegisteredError(
            f"engine_model={path!r} must be 'package.module:Attribute' (e.g. "
            "'ferrule_llama.engine:LlamaForCausalLM')"
        )
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise NotRegisteredError(
            f"engine_model={path!r}: module {module_name} has no attribute {attribute!r}"
        ) from None
