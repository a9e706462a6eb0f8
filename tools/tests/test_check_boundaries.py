"""tools/check_boundaries.py on small fabricated workspaces, and on this repository."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECKER = REPO / "tools" / "check_boundaries.py"


def run_checker(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECKER), "--root", str(root)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def add_package(
    root: Path,
    group: str,
    dist: str,
    dependencies: tuple[str, ...] = (),
    test_dependencies: tuple[str, ...] = (),
) -> Path:
    """``root/group/dist`` with a pyproject and ``src/<import name>/__init__.py``; returns src."""
    package = root / group / dist
    src = package / "src" / dist.replace("-", "_")
    src.mkdir(parents=True)
    (src / "__init__.py").write_text('"""A fake package."""\n')
    (package / "tests").mkdir()
    lines = [
        "[project]",
        f'name = "{dist}"',
        'version = "0.1.0"',
        f"dependencies = {list(dependencies)!r}".replace("'", '"'),
    ]
    if test_dependencies:
        lines += [
            "[project.optional-dependencies]",
            f"test = {list(test_dependencies)!r}".replace("'", '"'),
        ]
    (package / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return src


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A core, plugin A and plugin B, each using what it may, nothing more."""
    core = add_package(tmp_path, "packages", "ferrule-core")
    write(core / "specs.py", "import dataclasses\n\nimport pluggy\n")
    a = add_package(tmp_path, "plugins", "ferrule-a", dependencies=("ferrule-core>=0.1,<1",))
    write(
        a / "plugin.py",
        """\
        from ferrule_core import specs
        from ferrule_core.specs import dataclasses

        from . import helpers
        from .helpers import x
        """,
    )
    b = add_package(tmp_path, "plugins", "ferrule-b", dependencies=("ferrule_core>=0.1,<1",))
    write(b / "x.py", "import ferrule_core.specs\ny = 1\n")
    write(b.parent.parent / "tests" / "test_b.py", "import ferrule_b\nimport ferrule_core\n")
    return tmp_path


def test_clean_tree_passes(workspace: Path) -> None:
    result = run_checker(workspace)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 packages" in result.stdout
    assert "ferrule-core" in result.stdout


def test_plugin_importing_another_plugin_fails(workspace: Path) -> None:
    write(workspace / "plugins/ferrule-a/src/ferrule_a/bad.py", '"""Doc."""\n\nimport ferrule_b\n')
    result = run_checker(workspace)
    assert result.returncode == 1
    assert (
        "plugins/ferrule-a/src/ferrule_a/bad.py:3: ferrule_a imports ferrule_b: "
        "plugin: a plugin never imports another plugin" in result.stdout
    )


def test_from_import_inside_a_function_fails(workspace: Path) -> None:
    write(
        workspace / "plugins/ferrule-a/src/ferrule_a/lazy.py",
        """\
        def load():
            if True:
                from ferrule_b.x import y
            return y
        """,
    )
    result = run_checker(workspace)
    assert result.returncode == 1
    assert "ferrule_a/lazy.py:3: ferrule_a imports ferrule_b.x: plugin:" in result.stdout


def test_import_module_with_a_literal_fails(workspace: Path) -> None:
    write(
        workspace / "plugins/ferrule-a/src/ferrule_a/dyn.py",
        "import importlib\n\nmod = importlib.import_module('ferrule_b.x')\n",
    )
    result = run_checker(workspace)
    assert result.returncode == 1
    assert "ferrule_a/dyn.py:3: ferrule_a imports ferrule_b.x: plugin:" in result.stdout


def test_plugin_tests_are_checked_too(workspace: Path) -> None:
    write(workspace / "plugins/ferrule-a/tests/test_a.py", "\nfrom ferrule_b import x\n")
    result = run_checker(workspace)
    assert result.returncode == 1
    assert "plugins/ferrule-a/tests/test_a.py:2: ferrule_a imports ferrule_b: plugin:" in (
        result.stdout
    )


def test_core_importing_the_engine_fails(workspace: Path) -> None:
    write(workspace / "packages/ferrule-core/src/ferrule_core/up.py", "import ferrule_engine\n")
    result = run_checker(workspace)
    assert result.returncode == 1
    assert (
        "packages/ferrule-core/src/ferrule_core/up.py:1: ferrule_core imports ferrule_engine: "
        "core: ferrule_core imports no other ferrule package" in result.stdout
    )


def test_core_importing_a_plugin_fails(workspace: Path) -> None:
    write(workspace / "packages/ferrule-core/src/ferrule_core/p.py", "from ferrule_a import p\n")
    result = run_checker(workspace)
    assert result.returncode == 1
    assert "ferrule_core imports ferrule_a: core:" in result.stdout


def test_undeclared_dependency_fails(workspace: Path) -> None:
    add_package(workspace, "plugins", "ferrule-c")  # declares nothing
    write(workspace / "plugins/ferrule-c/src/ferrule_c/x.py", "from ferrule_core import specs\n")
    result = run_checker(workspace)
    assert result.returncode == 1
    assert (
        "plugins/ferrule-c/src/ferrule_c/x.py:1: ferrule_c imports ferrule_core: dependency: "
        "'ferrule-core' is not declared in [project] dependencies of "
        "plugins/ferrule-c/pyproject.toml" in result.stdout
    )


def test_test_extra_counts_for_tests_only(workspace: Path) -> None:
    add_package(workspace, "plugins", "ferrule-c", test_dependencies=("ferrule-core",))
    write(workspace / "plugins/ferrule-c/tests/test_c.py", "import ferrule_core\n")
    assert run_checker(workspace).returncode == 0

    write(workspace / "plugins/ferrule-c/src/ferrule_c/x.py", "import ferrule_core\n")
    result = run_checker(workspace)
    assert result.returncode == 1
    assert "ferrule_c/x.py:1: ferrule_c imports ferrule_core: dependency:" in result.stdout


def test_the_face_is_matched_exactly(workspace: Path) -> None:
    # `ferrule` is a prefix of every other name: `ferrulex` is not ours, `ferrule.cli` is the face.
    write(workspace / "plugins/ferrule-a/src/ferrule_a/ok.py", "import ferrulex\nimport ferrule_\n")
    assert run_checker(workspace).returncode == 1  # `ferrule_` is a (non-existent) ferrule module
    write(workspace / "plugins/ferrule-a/src/ferrule_a/ok.py", "import ferrulex\n")
    assert run_checker(workspace).returncode == 0

    write(workspace / "plugins/ferrule-a/src/ferrule_a/face.py", "from ferrule.cli import main\n")
    result = run_checker(workspace)
    assert result.returncode == 1
    assert "ferrule_a imports ferrule.cli: layering: plugins import only" in result.stdout


def test_layering_of_the_middle_and_the_face(tmp_path: Path) -> None:
    add_package(tmp_path, "packages", "ferrule-core")
    quant = add_package(tmp_path, "packages", "ferrule-quant", dependencies=("ferrule-core",))
    engine = add_package(tmp_path, "packages", "ferrule-engine", dependencies=("ferrule-core",))
    face = add_package(
        tmp_path,
        "packages",
        "ferrule",
        dependencies=("ferrule-core", "ferrule-quant", "ferrule-engine"),
    )
    llama = add_package(
        tmp_path, "plugins", "ferrule-llama", dependencies=("ferrule-core", "ferrule-engine")
    )
    cpu = add_package(tmp_path, "plugins", "ferrule-cpu", dependencies=("ferrule-core",))
    write(face / "api.py", "import ferrule_core\nimport ferrule_engine\nimport ferrule_quant\n")
    write(llama / "model.py", "import ferrule_core\nfrom ferrule_engine import layers\n")
    write(cpu / "platform.py", "from ferrule_core import specs\n")
    assert run_checker(tmp_path).returncode == 0

    write(quant / "bad.py", "from ferrule_engine import x\n")
    write(engine / "bad.py", "import ferrule_quant\n")
    write(face / "bad.py", "import ferrule_llama\n")
    write(llama / "bad.py", "import ferrule_quant\n")
    write(cpu / "bad.py", "import ferrule_engine\n")
    result = run_checker(tmp_path)
    assert result.returncode == 1
    out = result.stdout
    assert "ferrule_quant imports ferrule_engine: layering:" in out
    assert "ferrule_engine imports ferrule_quant: layering:" in out
    assert "ferrule imports ferrule_llama: layering: the face" in out
    assert "ferrule_llama imports ferrule_quant: layering: plugins import only" in out
    assert "ferrule_cpu imports ferrule_engine: layering: kernel and platform plugins" in out
    assert len(out.strip().splitlines()) == 5


def test_unparsable_file_is_reported(workspace: Path) -> None:
    write(workspace / "plugins/ferrule-a/src/ferrule_a/broken.py", "def f(:\n")
    result = run_checker(workspace)
    assert result.returncode == 1
    assert "ferrule_a/broken.py:1: cannot parse" in result.stdout


@pytest.mark.skipif(not (REPO / "packages").is_dir(), reason="no packages/ in this checkout")
def test_this_repository_passes() -> None:
    result = run_checker(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
