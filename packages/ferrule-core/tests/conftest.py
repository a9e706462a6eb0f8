"""Fixtures that fabricate installed plugin distributions for the loader tests."""

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
