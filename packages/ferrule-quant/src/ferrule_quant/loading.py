"""Load a GPTQ checkpoint into its ``transformers`` model, with ``QuantLinear`` layers.

The model skeleton is built from ``config.json`` with its parameters on the meta device (no
float weights are allocated), each ``nn.Linear`` that the checkpoint quantized is replaced by
a :class:`ferrule_core.QuantLinear`, and the checkpoint's tensors are then assigned in place.
Buffers the model computes itself (rotary ``inv_freq``) are built for real at construction,
since only parameters go to the meta device. Loading is strict: a tensor the model needs and
the checkpoint lacks, or one the checkpoint has and the model does not, is an error naming it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ferrule_core import FormatError, QuantizeConfig, QuantLinear, Registry
from ferrule_core.format import holds_checkpoint, quantized_layers, read_checkpoint

logger = logging.getLogger(__name__)

_MAX_LISTED = 10
# Buffers that old checkpoints stored and transformers now computes.
_IGNORED_UNEXPECTED = (r"rotary_emb\.inv_freq$",)


def load_model(
    folder: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    kernel: str | None = None,
) -> Any:
    """A model folder in eval mode on ``device``: a GPTQ checkpoint through
    :func:`load_quantized_model`, anything else through ``transformers`` itself."""
    if holds_checkpoint(Path(folder)):
        return load_quantized_model(folder, dtype=dtype, device=device, kernel=kernel)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=False)
    return model.to(device).eval()


def load_quantized_model(
    folder: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float16,
    device: torch.device | str = "cpu",
    kernel: str | None = None,
    registry: Registry | None = None,
) -> Any:
    """The ``transformers`` model of the GPTQ checkpoint in ``folder``, in eval mode on ``device``.

    ``dtype`` is the floating dtype of every non-quantized weight and of the scales;
    ``kernel`` fixes the linear kernel by name (default: the best the registry offers for
    each layer). Raises :class:`FormatError` when the checkpoint does not fit the model that
    its ``config.json`` describes, listing the missing and unexpected tensors.
    """
    from transformers import AutoConfig

    folder = Path(folder)
    tensors, qconfig = read_checkpoint(folder)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    if hasattr(config, "quantization_config"):  # or transformers looks for its own GPTQ backend
        del config.quantization_config
    with _parameters_on_meta():
        model = _build(config, dtype)
    layers = quantized_layers(tensors)
    problems = _replace_linears(model, layers, qconfig, dtype, kernel, registry)
    tied = _tied_groups(model)
    state = {name: _placed(tensor, dtype, device) for name, tensor in tensors.items()}
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as err:  # size mismatches of plain tensors
        raise FormatError(f"{folder} does not fit {type(model).__name__}: {err}") from err
    _tie(model, tied, state)
    problems.extend(_key_problems(model, result.unexpected_keys))
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise FormatError(
            f"{folder} does not fit the {type(model).__name__} its config.json describes:\n{lines}"
        )
    logger.info("loaded %s with %d quantized linear layers", folder, len(layers))
    return model.to(device).eval()


def _build(config: Any, dtype: torch.dtype) -> Any:
    """The model for ``config``: the class its ``architectures`` names, else a causal LM."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    kwargs = {"dtype" if major >= 5 else "torch_dtype": dtype}
    for name in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, name, None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls._from_config(config, **kwargs)
    return transformers.AutoModelForCausalLM.from_config(config, **kwargs)


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Put every parameter registered inside on the meta device; buffers stay real.

    So a skeleton allocates no weights, while buffers computed in ``__init__`` (rotary
    frequencies) keep their values. Patches ``nn.Module.register_parameter`` while open,
    as accelerate's ``init_empty_weights(include_buffers=False)`` does: build one model at
    a time.
    """
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and not param.is_meta:
            meta = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
            module._parameters[name] = meta

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def _replace_linears(
    model: nn.Module,
    layers: Mapping[str, Mapping[str, Tensor]],
    qconfig: QuantizeConfig,
    dtype: torch.dtype,
    kernel: str | None,
    registry: Registry | None,
) -> list[str]:
    """Swap each quantized ``nn.Linear`` for an empty ``QuantLinear``; return what did not fit."""
    problems = []
    for prefix, layer in layers.items():
        in_features, out_features = layer["g_idx"].numel(), layer["scales"].shape[-1]
        try:
            linear = model.get_submodule(prefix)
        except AttributeError:
            problems.append(
                f"{prefix}: the checkpoint quantized it, but the model has no such module"
            )
            continue
        if not isinstance(linear, nn.Linear):
            problems.append(
                f"{prefix}: the checkpoint quantized it, but the model's {prefix} is a "
                f"{type(linear).__name__}, not an nn.Linear"
            )
            continue
        if (linear.in_features, linear.out_features) != (in_features, out_features):
            problems.append(
                f"{prefix}: the checkpoint holds in_features={in_features}, "
                f"out_features={out_features}, but the model has nn.Linear({linear.in_features}, "
                f"{linear.out_features}); config.json and the weights disagree"
            )
            continue
        quant = QuantLinear(
            in_features,
            out_features,
            qconfig.bits,
            qconfig.group_size,
            bias=linear.bias is not None,
            desc_act=qconfig.desc_act,
            sym=qconfig.sym,
            dtype=dtype,
            device="meta",
            kernel=kernel,
            registry=registry,
        )
        parent, _, child = prefix.rpartition(".")
        setattr(model.get_submodule(parent), child, quant)
    return problems


def _placed(tensor: Tensor, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    if tensor.is_floating_point():
        return tensor.to(device=device, dtype=dtype)
    return tensor.to(device=device)


def _tied_groups(model: nn.Module) -> list[list[str]]:
    """Names that share one parameter (tied embeddings), as the skeleton ties them."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _tie(model: nn.Module, tied: list[list[str]], state: Mapping[str, Tensor]) -> None:
    """Re-tie what loading by assignment untied: absent names share a loaded one.

    Names the checkpoint gives separately stay tied only when their values are equal.
    """
    for names in tied:
        loaded = [name for name in names if name in state]
        if not loaded:
            continue  # reported as missing
        source = model.get_parameter(loaded[0])
        for name in names:
            if name == loaded[0]:
                continue
            if name in state and not torch.equal(model.get_parameter(name), source):
                logger.warning(
                    "%s and %s are tied in the config but differ in the checkpoint: keeping both",
                    loaded[0],
                    name,
                )
                continue
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr, source)


def _key_problems(model: nn.Module, unexpected: list[str]) -> list[str]:
    missing = [name for name, t in model.state_dict(keep_vars=True).items() if t.is_meta]
    patterns = [
        *(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ()),
        *_IGNORED_UNEXPECTED,
    ]
    unexpected = [k for k in unexpected if not any(re.search(p, k) for p in patterns)]
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} tensor(s) the model needs are missing: {_listing(missing)}"
        )
    if unexpected:
        problems.append(
            f"{len(unexpected)} tensor(s) in the checkpoint have no place in the model: "
            f"{_listing(unexpected)}"
        )
    return problems


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")
