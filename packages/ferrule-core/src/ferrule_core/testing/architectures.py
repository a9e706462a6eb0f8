"""Conformance tests for architecture plugins: the quantization layout fits the real model.

An architecture plugin's tests subclass :class:`ArchitectureConformance`::

    from ferrule_core.testing import ArchitectureConformance


    class TestLlamaLayout(ArchitectureConformance):
        architecture = "llama"
        config_class = "LlamaConfig"  # sized by ferrule_core.testing.TINY_SIZES

The tests build the tiny ``transformers`` model from random weights and check the
spec's layout against it with :func:`layout_problems`.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from typing import Any

import pytest
import torch
from torch import nn

from ferrule_core.plugins import load_plugins
from ferrule_core.registry import Registry
from ferrule_core.specs import ArchitectureSpec
from ferrule_core.testing.tiny_models import tiny_config


def layout_problems(
    spec: ArchitectureSpec, model: nn.Module, sample: torch.Tensor | None = None
) -> list[str]:
    """Every way ``spec``'s quantization layout disagrees with ``model``.

    Checks that the blocks path is a ``ModuleList``, the outside modules exist, each
    sub-layer named in the groups is a linear layer in every block, each block linear is
    named exactly once, and (given ``sample`` input ids) that the groups run in the
    order listed, so true-sequential quantization sees the inputs it expects.
    """
    problems: list[str] = []
    try:
        blocks = model.get_submodule(spec.blocks_path)
    except AttributeError:
        return [f"blocks_path {spec.blocks_path!r} does not exist in {type(model).__name__}"]
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        return [
            f"blocks_path {spec.blocks_path!r} is a {type(blocks).__name__}, not a non-empty ModuleList"
        ]
    for name in spec.outside_modules:
        if not _has_module(model, name):
            problems.append(f"outside module {name!r} does not exist")
    listed = spec.quantized_modules
    for twice in sorted({n for n in listed if listed.count(n) > 1}):
        problems.append(f"sub-layer {twice!r} is listed in more than one group")
    for index, block in enumerate(blocks):
        linears = {name for name, mod in block.named_modules() if _is_linear(mod)}
        for name in listed:
            if not _has_module(block, name):
                problems.append(f"block {index}: sub-layer {name!r} does not exist")
            elif name not in linears:
                kind = type(block.get_submodule(name)).__name__
                problems.append(
                    f"block {index}: sub-layer {name!r} is a {kind}, not a linear layer"
                )
        for name in sorted(linears - set(listed)):
            problems.append(f"block {index}: linear {name!r} is in no sequential group")
    if sample is not None and not problems:
        problems.extend(_order_problems(spec, model, blocks[0], sample))
    return problems


def _order_problems(
    spec: ArchitectureSpec, model: nn.Module, block: nn.Module, sample: torch.Tensor
) -> list[str]:
    first_call: dict[str, int] = {}
    handles = []
    for name in spec.quantized_modules:
        module = block.get_submodule(name)

        def record(_module, _inputs, _output, name=name):
            first_call.setdefault(name, len(first_call))

        handles.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for handle in handles:
            handle.remove()
    missing = [n for n in spec.quantized_modules if n not in first_call]
    if missing:
        return [f"sub-layers {missing} never ran in a forward pass"]
    problems = []
    for earlier, later in zip(spec.sequential_groups, spec.sequential_groups[1:], strict=False):
        if max(first_call[n] for n in earlier) > min(first_call[n] for n in later):
            problems.append(
                f"group {list(later)} runs before group {list(earlier)} finishes; "
                "list the groups in execution order"
            )
    return problems


def _has_module(root: nn.Module, name: str) -> bool:
    try:
        root.get_submodule(name)
    except AttributeError:
        return False
    return True


def _is_linear(module: nn.Module) -> bool:
    # transformers' Conv1D (GPT-2 style) is a linear layer with a transposed weight.
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


class ArchitectureConformance:
    """Base class: set ``architecture`` and ``config_class`` (with ``config_overrides``), or
    implement ``tiny_config()``, in a subclass."""

    architecture: str = ""
    config_class: str = ""  # a transformers config class name, e.g. "LlamaConfig"
    config_overrides: dict[str, Any] = {}

    def tiny_config(self) -> Any:
        if not self.config_class:
            raise NotImplementedError("set config_class or return a small PretrainedConfig")
        try:
            return tiny_config(self.config_class, **self.config_overrides)
        except LookupError as exc:
            pytest.skip(str(exc))

    def make_registry(self) -> Registry:
        return load_plugins()

    @pytest.fixture(scope="class")
    @classmethod
    def registry(cls) -> Registry:
        return cls().make_registry()

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls) -> nn.Module:
        transformers = pytest.importorskip("transformers")
        torch.manual_seed(0)
        return transformers.AutoModelForCausalLM.from_config(cls().tiny_config()).eval()

    def test_registered_for_its_model_types(self, registry) -> None:
        spec = registry.architectures[self.architecture]
        assert spec.plugin
        assert self.tiny_config().model_type in spec.model_types
        for model_type in spec.model_types:
            assert registry.architecture_for(model_type) is spec

    def test_entry_point_module_imports_no_torch(self, registry) -> None:
        """Listing plugins must stay fast: the entry-point module imports no heavy library."""
        spec = registry.architectures[self.architecture]
        found = [ep for ep in metadata.entry_points(group="ferrule") if ep.name == spec.plugin]
        if not found:
            pytest.skip(f"plugin {spec.plugin!r} is not installed through an entry point")
        code = (
            f"import sys, importlib; module = importlib.import_module({found[0].module!r}); "
            "module.ferrule_register_architectures(); "
            "heavy = {'torch', 'transformers', 'triton'} & set(sys.modules); "
            "sys.exit(f'imported {sorted(heavy)}' if heavy else 0)"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr

    def test_layout_matches_model(self, registry, model) -> None:
        spec = registry.architectures[self.architecture]
        vocab = self.tiny_config().vocab_size
        sample = torch.randint(0, vocab, (1, 8))
        assert layout_problems(spec, model, sample) == []
