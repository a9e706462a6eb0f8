"""Run the real ``ferrule`` command in a subprocess, optionally with fabricated plugins."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ferrule_core.testing import tiny_config, write_plugin_distribution, write_tiny_model


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


@contextlib.contextmanager
def running_server(model_dir: Path, *args: str, timeout: float = 180):
    """``ferrule serve MODEL_DIR ARGS`` on a free port; yields its base URL, stops it after."""
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "ferrule", "serve", str(model_dir), "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError("ferrule serve exited:\n" + process.stdout.read().decode())
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"ferrule serve did not come up in {timeout} s")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def serve():
    """:func:`running_server`, for tests (helpers are shared as fixtures, not imports)."""
    return running_server


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny random Llama folder (sharp weights, 256 positions) the engine tests share."""
    config = tiny_config("LlamaConfig", initializer_range=0.2, max_position_embeddings=256)
    return write_tiny_model(tmp_path_factory.mktemp("llama"), config)
