"""Fixtures for the loader tests (fabricated plugin distributions) and the checkpoint tests."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

from ferrule_core.testing import write_plugin_distribution

_counter = itertools.count()

_KERNEL_PLUGIN = """
from ferrule_core import hookimpl, KernelSpec

@hookimpl
def ferrule_register_kernels():
    return [KernelSpec(name="{kernel}", kind="linear", factory=lambda layer: None,
                       platforms=("cpu",), bits=(4,), priority={priority})]
"""


@pytest.fixture
def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Install a fake distribution ``fake-<name>`` whose entry point ``name`` runs ``source``."""
    modules = []

    def install(name: str, source: str) -> str:
        folder = tmp_path / f"site{next(_counter)}"
        folder.mkdir()
        monkeypatch.syspath_prepend(str(folder))
        modules.append(write_plugin_distribution(folder, name, source))
        return name

    yield install
    for module in modules:  # the next test may reuse the name with other source
        sys.modules.pop(module, None)


@pytest.fixture
def install_kernel_plugin(install_plugin):
    """Install a fake plugin registering one 4-bit CPU linear kernel of a given priority."""

    def install(name: str, kernel: str, priority: int = 0) -> str:
        return install_plugin(name, _KERNEL_PLUGIN.format(kernel=kernel, priority=priority))

    return install


# --- GPTQ checkpoints: a small quantized state dict for the checkpoint tests ------------

_Q_PROJ = "model.layers.0.self_attn.q_proj"
_UP_PROJ = "model.layers.0.mlp.up_proj"
_MODEL_CONFIG = {"model_type": "llama", "hidden_size": 64, "vocab_size": 16}


@pytest.fixture
def q_proj() -> str:
    """The prefix of the first quantized layer in ``quantized_state`` (64 in, 64 out)."""
    return _Q_PROJ


@pytest.fixture
def up_proj() -> str:
    """The prefix of the second quantized layer in ``quantized_state`` (128 in, 64 out, bias)."""
    return _UP_PROJ


@pytest.fixture
def model_config() -> dict:
    """A small model's ``config.json`` content, to save checkpoints with."""
    return _MODEL_CONFIG


def _act_order_g_idx(k: int, group_size: int, seed: int):
    import torch

    order = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[order] = (torch.arange(k) // group_size).to(torch.int32)
    return g_idx


def _quantized_state(config, seed: int = 0, positive: bool = False):
    """``(unpacked layers, state dict)``: two quantized layers (one with bias) and plain tensors.

    The state dict is in ferrule's memory convention (v2 zeros); ``lm_head`` shares storage
    with the embedding, as tied weights do.
    """
    import torch

    from ferrule_core.format import pack, quantize_rtn

    gen = torch.Generator().manual_seed(seed)
    shapes = {_Q_PROJ: (64, 64), _UP_PROJ: (64, 128)}  # name: (out_features N, in_features K)
    layers, tensors = {}, {}
    for i, (prefix, (n, k)) in enumerate(shapes.items()):
        weight = torch.randn(n, k, generator=gen)
        weight = weight.abs() if positive else weight
        g_idx = None
        if config.desc_act:
            g_idx = _act_order_g_idx(k, config.group_size, seed + i)
        q = quantize_rtn(weight, config.bits, config.group_size, sym=config.sym, g_idx=g_idx)
        layers[prefix] = q
        tensors.update({f"{prefix}.{part}": t for part, t in pack(q).items()})
    tensors[f"{_UP_PROJ}.bias"] = torch.randn(64, generator=gen).half()
    embed = torch.randn(16, 64, generator=gen).half()
    tensors["model.embed_tokens.weight"] = embed
    tensors["model.norm.weight"] = torch.rand(64, generator=gen)
    tensors["lm_head.weight"] = embed
    return layers, tensors


def _assert_same(read: dict, expected: dict) -> None:
    import torch

    assert read.keys() == expected.keys()
    for name, tensor in expected.items():
        assert read[name].dtype == tensor.dtype, name
        assert torch.equal(read[name], tensor), name


@pytest.fixture
def quantized_state():
    """``quantized_state(config, seed=0, positive=False)`` gives ``(unpacked layers, state
    dict)``: layers ``q_proj`` and ``up_proj`` (with bias), an embedding, a norm and an
    ``lm_head`` tied to the embedding, in ferrule's memory convention (v2 zeros)."""
    return _quantized_state


@pytest.fixture
def assert_same():
    """``assert_same(read, expected)``: the same tensor names, dtypes and values."""
    return _assert_same
