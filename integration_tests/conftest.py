"""Run the real ``ferrule`` command in a subprocess, optionally with fabricated plugins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ferrule_core.testing import write_plugin_distribution


@pytest.fixture
def ferrule(tmp_path: Path):
    """``ferrule(*args, plugins={name: source}, env={...})`` -> CompletedProcess.

    Plugins are fabricated distributions on the subprocess's ``PYTHONPATH``.
    """

    def run(*args: str, plugins: dict[str, str] | None = None, env: dict[str, str] | None = None):
        site = tmp_path / "site"
        site.mkdir(exist_ok=True)
        for name, source in (plugins or {}).items():
            write_plugin_distribution(site, name, source)
        environ = {**os.environ, **(env or {})}
        environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(site), environ.get("PYTHONPATH")])
        )
        return subprocess.run(
            [sys.executable, "-m", "ferrule", *args],
            capture_output=True,
            text=True,
            env=environ,
            timeout=600,
        )

    return run
