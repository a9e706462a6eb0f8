"""Check the import boundaries between ferrule's packages.

Run from anywhere (``python tools/check_boundaries.py [--root PATH]``); ``nox -s boundaries``
runs it. Stdlib only, so it needs no install.

It reads every package of the workspace (``packages/*`` and ``plugins/*``, each a directory with a
``pyproject.toml``), parses every ``.py`` file under its ``src/`` and ``tests/`` with :mod:`ast`,
collects the ferrule modules each file imports (``import x``, ``from x import y``, also inside
functions, and ``importlib.import_module("x")`` / ``__import__("x")`` with a literal name), and
enforces the dependency direction of ``ARCHITECTURE.md``:

* ``core``: the core imports no other ferrule package.
* ``plugin``: a plugin never imports another plugin.
* ``layering``: ferrule_quant and ferrule_engine import only the core; the face ``ferrule`` imports
  the core, quant and engine but no plugin; architecture plugins import the core and the engine;
  kernel and platform plugins import the core only.
* ``dependency``: a ferrule package imported from ``src/`` is declared in that package's
  ``[project] dependencies``; ``tests/`` may also use ``[project.optional-dependencies] test``.

Each violation is printed as ``path:line: <importer> imports <imported>: <rule>`` and the exit
status is 1; a clean tree prints one summary line and exits 0.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

CORE = "ferrule_core"
QUANT = "ferrule_quant"
ENGINE = "ferrule_engine"
FACE = "ferrule"

# What each package under packages/ may import (besides itself), from ARCHITECTURE.md.
# A new package under packages/ must be added here: where it sits is a design decision.
PACKAGE_LAYERS: dict[str, frozenset[str]] = {
    CORE: frozenset(),
    QUANT: frozenset({CORE}),
    ENGINE: frozenset({CORE}),
    FACE: frozenset({CORE, QUANT, ENGINE}),
}
# Plugins: "architecture plugins -> ferrule_engine (layers), ferrule_core (specs);
# kernel and platform plugins -> ferrule_core only". A plugin not named here is an
# architecture plugin (the wider of the two).
KERNEL_AND_PLATFORM_PLUGINS = frozenset(
    {"ferrule_cpu", "ferrule_rocm", "ferrule_cuda_kernels", "ferrule_triton_kernels"}
)
ARCHITECTURE_PLUGIN_MAY_IMPORT = frozenset({CORE, ENGINE})
KERNEL_PLUGIN_MAY_IMPORT = frozenset({CORE})

PACKAGE_GROUPS = ("packages", "plugins")
SKIP_DIRS = {"__pycache__", "build", "dist"}


@dataclass
class Package:
    """One distribution of the workspace."""

    dir: Path  # packages/ferrule-core
    group: str  # "packages" or "plugins"
    dist: str  # normalized distribution name: "ferrule-core"
    import_names: list[str]  # top-level modules under src/: ["ferrule_core"]
    dependencies: set[str] = field(default_factory=set)  # normalized dist names
    test_dependencies: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        """The main import name, used in messages."""
        return self.import_names[0]

    @property
    def is_plugin(self) -> bool:
        return self.group == "plugins"


@dataclass
class Violation:
    path: Path
    line: int
    message: str

    def render(self, root: Path) -> str:
        try:
            shown = self.path.relative_to(root)
        except ValueError:
            shown = self.path
        return f"{shown.as_posix()}:{self.line}: {self.message}"


def normalize(dist: str) -> str:
    """PEP 503 normalization: ``Ferrule_Core`` -> ``ferrule-core``."""
    return re.sub(r"[-_.]+", "-", dist).lower()


def requirement_name(requirement: str) -> str | None:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return normalize(match.group(1)) if match else None


def is_ferrule_module(top: str) -> bool:
    """``ferrule`` and ``ferrule_*``, matched exactly (``ferrulex`` is not ours)."""
    return top == FACE or top.startswith(FACE + "_")


def conventional_dist(import_name: str) -> str:
    return normalize(import_name)


def find_import_names(pkg_dir: Path, dist: str) -> list[str]:
    src = pkg_dir / "src"
    names: list[str] = []
    if src.is_dir():
        for entry in sorted(src.iterdir()):
            if entry.name.startswith((".", "_")) or entry.name.endswith(".egg-info"):
                continue
            if entry.is_dir() and entry.name not in SKIP_DIRS:
                names.append(entry.name)
            elif entry.suffix == ".py":
                names.append(entry.stem)
    # A package whose src/ is not written yet still gets its conventional name.
    return names or [dist.replace("-", "_")]


def load_packages(root: Path, violations: list[Violation]) -> list[Package]:
    packages: list[Package] = []
    for group in PACKAGE_GROUPS:
        group_dir = root / group
        if not group_dir.is_dir():
            continue
        for pkg_dir in sorted(p for p in group_dir.iterdir() if (p / "pyproject.toml").is_file()):
            pyproject = pkg_dir / "pyproject.toml"
            try:
                data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                violations.append(Violation(pyproject, 1, f"cannot parse pyproject.toml: {exc}"))
                data = {}
            project = data.get("project", {})
            dist = normalize(project.get("name", pkg_dir.name))
            optional = project.get("optional-dependencies", {})
            packages.append(
                Package(
                    dir=pkg_dir,
                    group=group,
                    dist=dist,
                    import_names=find_import_names(pkg_dir, dist),
                    dependencies={
                        n for r in project.get("dependencies", []) if (n := requirement_name(r))
                    },
                    test_dependencies={
                        n for r in optional.get("test", []) if (n := requirement_name(r))
                    },
                )
            )
    return packages


def iter_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """Every absolute module name a file imports, with its line, wherever it sits."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and node.args:
            name = node.args[0].value if isinstance(node.args[0], ast.Constant) else None
            if isinstance(name, str) and name and not name.startswith("."):
                found.append((node.lineno, name))
    return found


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Attribute):  # importlib.import_module(...)
        return func.attr == "import_module"
    if isinstance(func, ast.Name):  # import_module(...) / __import__(...)
        return func.id in {"import_module", "__import__"}
    return False


def iter_python_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(
        p
        for p in directory.rglob("*.py")
        if not any(
            part in SKIP_DIRS or part.startswith(".")
            for part in p.relative_to(directory).parts[:-1]
        )
    )


def allowed_for(package: Package) -> tuple[frozenset[str], str] | None:
    """The ferrule packages ``package`` may import, and the rule that says so."""
    if package.is_plugin:
        if package.name in KERNEL_AND_PLATFORM_PLUGINS:
            return (
                KERNEL_PLUGIN_MAY_IMPORT,
                "layering: kernel and platform plugins import only ferrule_core",
            )
        return (
            ARCHITECTURE_PLUGIN_MAY_IMPORT,
            "layering: plugins import only ferrule_core and ferrule_engine",
        )
    if package.name in PACKAGE_LAYERS:
        allowed = PACKAGE_LAYERS[package.name]
        if package.name == CORE:
            return allowed, "core: ferrule_core imports no other ferrule package"
        if package.name == FACE:
            return allowed, (
                "layering: the face ferrule imports only ferrule_core, ferrule_quant "
                "and ferrule_engine, never a plugin"
            )
        return allowed, f"layering: {package.name} imports only {', '.join(sorted(allowed))}"
    return None


def check(root: Path) -> tuple[list[Violation], int, list[Package]]:
    violations: list[Violation] = []
    packages = load_packages(root, violations)

    owner: dict[str, Package] = {}
    for package in packages:
        for name in package.import_names:
            if name in owner:
                violations.append(
                    Violation(
                        package.dir / "pyproject.toml",
                        1,
                        f"{package.dist} and {owner[name].dist} both provide module {name!r}",
                    )
                )
            owner.setdefault(name, package)
    plugin_names = {n for p in packages if p.is_plugin for n in p.import_names}

    files_checked = 0
    for package in packages:
        rule = allowed_for(package)
        if rule is None:
            violations.append(
                Violation(
                    package.dir / "pyproject.toml",
                    1,
                    f"{package.name} is not in the layering table of tools/check_boundaries.py "
                    "(PACKAGE_LAYERS): add it with what it may import",
                )
            )
            continue
        allowed, layering_rule = rule
        own = set(package.import_names)
        for kind in ("src", "tests"):
            for path in iter_python_files(package.dir / kind):
                files_checked += 1
                try:
                    tree = ast.parse(path.read_bytes(), filename=str(path))
                except (SyntaxError, ValueError) as exc:
                    line = getattr(exc, "lineno", None) or 1
                    violations.append(Violation(path, line, f"cannot parse: {exc}"))
                    continue
                for line, module in iter_imports(tree):
                    top = module.split(".")[0]
                    if not is_ferrule_module(top) or top in own:
                        continue
                    prefix = f"{package.name} imports {module}"
                    if top not in allowed:
                        target = owner.get(top)
                        if package.is_plugin and (
                            top in plugin_names or (target is None and top not in PACKAGE_LAYERS)
                        ):
                            reason = "plugin: a plugin never imports another plugin"
                        else:
                            reason = layering_rule
                        violations.append(Violation(path, line, f"{prefix}: {reason}"))
                        continue
                    dist = owner[top].dist if top in owner else conventional_dist(top)
                    declared = package.dependencies
                    where = "[project] dependencies"
                    if kind == "tests":
                        declared = declared | package.test_dependencies
                        where += " or [project.optional-dependencies] test"
                    if dist not in declared:
                        pyproject = (package.dir / "pyproject.toml").relative_to(root)
                        violations.append(
                            Violation(
                                path,
                                line,
                                f"{prefix}: dependency: {dist!r} is not declared in {where} "
                                f"of {pyproject.as_posix()}",
                            )
                        )
    return violations, files_checked, packages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parent.parent,
        help="workspace root holding packages/ and plugins/ (default: this repository)",
    )
    args = parser.parse_args(argv)
    root = args.root.resolve()

    violations, files_checked, packages = check(root)
    for violation in sorted(violations, key=lambda v: (str(v.path), v.line, v.message)):
        print(violation.render(root))
    if violations:
        print(
            f"check_boundaries: {len(violations)} violation(s) in {files_checked} files "
            f"of {len(packages)} packages",
            file=sys.stderr,
        )
        return 1
    names = ", ".join(p.dist for p in packages) or "none"
    print(f"check_boundaries: {files_checked} files in {len(packages)} packages ({names}): ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
