"""``ferrule plugins`` with the real installed plugins, and with broken ones beside them."""

from __future__ import annotations

import json
import subprocess
import sys

BROKEN_IMPORT = "raise ImportError('this plugin needs a library that is not installed')"
RAISING_HOOK = """
from ferrule_core import hookimpl

@hookimpl
def ferrule_register_kernels():
    raise RuntimeError("kernel discovery exploded")
"""
TYPO_HOOK = """
from ferrule_core import hookimpl

@hookimpl
def ferrule_register_platform():
    return []
"""


def test_lists_installed_plugins_kernels_and_platform(ferrule):
    done = ferrule("plugins", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    plugins = {p["name"]: p for p in report["plugins"]}
    assert plugins["core"]["distribution"] == "ferrule-core"
    assert plugins["cpu"]["distribution"] == "ferrule-cpu" and plugins["cpu"]["version"]
    kernels = {k["name"]: k for k in report["kernels"]}
    assert kernels["reference"]["plugin"] == "core"
    assert any(k["plugin"] == "cpu" and k["platforms"] == ["cpu"] for k in kernels.values())
    assert report["platform"]["selected"] == "cpu"
    assert report["failures"] == []


def test_broken_plugins_do_not_take_the_command_down(ferrule):
    done = ferrule(
        "plugins",
        "--json",
        plugins={"broken": BROKEN_IMPORT, "raising": RAISING_HOOK, "typo": TYPO_HOOK},
    )
    assert done.returncode == 0, done.stderr
    failures = {f["name"]: f["error"] for f in json.loads(done.stdout)["failures"]}
    assert "not installed" in failures["broken"]
    assert "kernel discovery exploded" in failures["raising"]
    assert "did you mean ferrule_register_platforms?" in failures["typo"]
    for name in ("broken", "raising", "typo"):
        assert f"'{name}'" in done.stderr  # a warning names each one
    text = ferrule("plugins", plugins={})
    assert (
        text.returncode == 0 and "FAILED" in text.stdout and "reference  (from core)" in text.stdout
    )


def test_listing_plugins_imports_no_torch():
    code = (
        "import sys\n"
        "from ferrule.cli import main\n"
        "assert main(['plugins']) == 0\n"
        "heavy = [m for m in ('torch', 'transformers', 'triton') if m in sys.modules]\n"
        "sys.exit(f'imported {heavy}' if heavy else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_allow_list_and_trace(ferrule):
    done = ferrule(
        "plugins", "--json", env={"FERRULE_LOAD_PLUGINS": "core", "FERRULE_TRACE_PLUGINS": "1"}
    )
    assert done.returncode == 0, done.stderr
    assert [p["name"] for p in json.loads(done.stdout)["plugins"]] == ["core"]
    assert "skipped plugin cpu" in done.stderr and "core.ferrule_register_kernels()" in done.stderr
