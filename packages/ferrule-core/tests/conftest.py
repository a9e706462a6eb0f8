"""Fixtures that fabricate installed plugin distributions for the loader tests."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import pytest

_counter = itertools.count()


@pytest.fixture
def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Install a fake distribution whose ``ferrule`` entry point names a module of ``source``.

    Returns the entry-point name. The distribution is a ``.dist-info`` folder on
    ``sys.path``, which is how ``importlib.metadata`` finds installed packages.
    """
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(name: str, source: str, dist: str | None = None) -> str:
        module = f"fake_ferrule_plugin_{name}_{next(_counter)}"
        dist = dist or f"fake-{name}"
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"{dist.replace('-', '_')}-0.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
        (info / "entry_points.txt").write_text(f"[ferrule]\n{name} = {module}\n")
        return name

    return install


_KERNEL_PLUGIN = """
from ferrule_core import hookimpl, KernelSpec

@hookimpl
def ferrule_register_kernels():
    return [KernelSpec(name="{kernel}", kind="linear", factory=lambda layer: None,
                       platforms=("cpu",), bits=(4,), priority={priority})]
"""


@pytest.fixture
def install_kernel_plugin(install_plugin):
    """Install a fake plugin registering one 4-bit CPU linear kernel of a given priority."""

    def install(name: str, kernel: str, priority: int = 0) -> str:
        return install_plugin(name, _KERNEL_PLUGIN.format(kernel=kernel, priority=priority))

    return install
