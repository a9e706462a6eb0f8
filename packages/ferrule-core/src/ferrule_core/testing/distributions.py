"""Fabricated plugin distributions, for testing how plugins are discovered and loaded."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path


def write_plugin_distribution(
    folder: Path, name: str, source: str, *, dist: str | None = None, version: str = "0.3"
) -> str:
    """Write a module of ``source`` and a ``.dist-info`` naming it in the ``ferrule`` group.

    With ``folder`` on ``sys.path`` (or ``PYTHONPATH`` of a subprocess),
    ``importlib.metadata`` sees an installed distribution ``dist`` (default
    ``fake-<name>``) whose entry point ``name`` is the module. Returns the module name.
    """
    dist = dist or f"fake-{name}"
    module = "fake_ferrule_plugin_" + re.sub(r"\W", "_", name)
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    info = folder / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[ferrule]\n{name} = {module}\n")
    return module
