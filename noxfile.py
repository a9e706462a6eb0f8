"""Every developer and CI task of the ferrule workspace.

    nox                      # the gate CI runs: lint boundaries tests integration
    nox -s tests -- -k kv    # pytest arguments after --; a path narrows the run to it
    nox -s demo              # ferrule plugins + ferrule demo in a fresh environment
    nox -s gpu               # on a machine whose python already holds a CUDA torch
    nox -l                   # list sessions

Packages are found by globbing packages/* and plugins/* (each a directory with a
pyproject.toml), so a new package needs no change here. Every pip install goes through
constraints/cpu.txt, which pins the CPU build of torch; without it pip would fetch a
multi-GB CUDA build.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nox

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

nox.needs_version = ">=2024.3.2"
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_external_run = True
nox.options.sessions = ["lint", "boundaries", "tests", "integration"]

ROOT = Path(__file__).resolve().parent
CONSTRAINTS = ("-c", "constraints/cpu.txt")
CORE = "ferrule-core"
RUFF = "ruff==0.17.6"  # pinned: a new ruff release may reformat code that passed yesterday
TEST_DEPS = ("pytest", "pytest-cov", "pytest-timeout", "transformers", "safetensors", "numpy")
# transformers' GGUF loader, for building the real model once (ferrule.assets.real_model)
REAL_MODEL_DEPS = ("gguf>=0.10.0", "accelerate>=1.1.0")
TEST_TIMEOUT = "--timeout=900"  # seconds per test: a hung test fails instead of eating CI's 90 min
# Tests never reach the Hugging Face Hub: tiny models are built or shipped locally.
TEST_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _requirement_name(requirement: str) -> str:
    name = requirement.strip()
    for stop in "[<>=!~;@ ":
        name = name.split(stop, 1)[0]
    return _normalize(name)


def find_packages() -> list[Path]:
    """The workspace's packages, relative to the root, each after the local packages it needs.

    ferrule-core comes first, then the rest in dependency order (ties by path).
    """
    found: dict[str, tuple[Path, set[str]]] = {}
    for group in ("packages", "plugins"):
        for pyproject in sorted((ROOT / group).glob("*/pyproject.toml")):
            project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
            name = _normalize(project.get("name", pyproject.parent.name))
            needs = {_requirement_name(r) for r in project.get("dependencies", [])}
            found[name] = (pyproject.parent.relative_to(ROOT), needs)

    ordered: list[Path] = []
    placed: set[str] = set()
    pending = sorted(found, key=lambda n: (n != CORE, str(found[n][0])))
    while pending:
        # The first package whose local needs are all placed; on a cycle, the first one left.
        ready = next(
            (n for n in pending if (found[n][1] & found.keys()) <= placed | {n}), pending[0]
        )
        ordered.append(found[ready][0])
        placed.add(ready)
        pending.remove(ready)
    return ordered


def _editable(package: Path) -> list[str]:
    """``-e path``, with the package's ``test`` extra when it declares one."""
    pyproject = tomllib.loads((ROOT / package / "pyproject.toml").read_text("utf-8"))
    project = pyproject.get("project", {})
    extra = "[test]" if "test" in project.get("optional-dependencies", {}) else ""
    return ["-e", f"{package.as_posix()}{extra}"]


def install_workspace(session: nox.Session, *extra: str) -> None:
    """torch through the constraints file, then every local package (editable) in one pip call."""
    session.install("torch", *CONSTRAINTS)
    editables = [arg for package in find_packages() for arg in _editable(package)]
    session.install(*editables, *TEST_DEPS, *extra, *CONSTRAINTS)


def _test_dirs(session: nox.Session) -> list[str]:
    """Each package's tests/ that holds at least one test file.

    One pytest run covers them all, which --import-mode=importlib allows as long as no
    tests/ is itself a package: every one of them would be the module ``tests``.
    """
    dirs = []
    for package in find_packages():
        tests = ROOT / package / "tests"
        if (tests / "__init__.py").exists():
            session.error(
                f"{(package / 'tests' / '__init__.py').as_posix()}: delete it; test dirs are not "
                "packages here (pytest runs with --import-mode=importlib over all of them at once)"
            )
        if any(tests.rglob("test_*.py")):
            dirs.append((package / "tests").as_posix())
    return dirs


def _names_a_path(args: list[str]) -> bool:
    return any(Path(arg.split("::", 1)[0]).exists() for arg in args if not arg.startswith("-"))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole tree."""
    session.install(RUFF, *CONSTRAINTS)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def boundaries(session: nox.Session) -> None:
    """Import boundaries between packages (tools/check_boundaries.py), then the checker's tests."""
    session.run("python", "tools/check_boundaries.py")
    session.install("pytest", *CONSTRAINTS)
    session.run("pytest", "tools/tests", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """Every package's tests on the CPU (-m "not gpu" unless arguments are given)."""
    dirs = _test_dirs(session)
    if not dirs:
        session.skip("no package has tests yet")
    install_workspace(session)
    args = list(session.posargs) or ["-m", "not gpu"]
    targets = [] if _names_a_path(args) else dirs
    session.run("pytest", TEST_TIMEOUT, *targets, *args, env=TEST_ENV)


@nox.session
def integration(session: nox.Session) -> None:
    """Tests that cross packages: quantize -> save -> load -> serve, a real client, TP."""
    if not any((ROOT / "integration_tests").rglob("test_*.py")):
        session.skip("integration_tests/ holds no tests yet")
    install_workspace(session, *REAL_MODEL_DEPS)
    args = list(session.posargs) or ["-m", "not gpu"]
    targets = [] if _names_a_path(args) else ["integration_tests"]
    session.run("pytest", TEST_TIMEOUT, *targets, *args, env=TEST_ENV)


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: the installed plugins, then a real model quantized and evaluated."""
    install_workspace(session, *REAL_MODEL_DEPS)
    session.run("ferrule", "plugins", env=TEST_ENV)
    session.run("ferrule", "demo", *session.posargs, env=TEST_ENV)


@nox.session(default=False)
def quality(session: nox.Session) -> None:
    """The full perplexity table on the real model, written into docs/benchmarks.md."""
    install_workspace(session, *REAL_MODEL_DEPS)
    session.run(
        "ferrule",
        "demo",
        "--full",
        "--markdown",
        "docs/benchmarks.md",
        *session.posargs,
        env=TEST_ENV,
    )


@nox.session(venv_backend="none")
def gpu(session: nox.Session) -> None:
    """Tests marked gpu, for the GPU machine. Not part of the default gate.

    Runs in the environment that runs nox, whose torch must be a CUDA build (the CPU
    constraints would replace it in a fresh venv). The packages are installed editable
    with --no-deps, so nothing else there changes. Offline: have hatchling importable
    (then no build isolation is needed) or point PIP_FIND_LINKS at a folder of its wheels.
    """
    python = sys.executable
    probe = (
        "import sys, torch; ok = torch.cuda.is_available(); "
        "print(f'{sys.executable}: torch {torch.__version__}, CUDA available: {ok}'); "
        "sys.exit(0 if ok else 'this torch sees no CUDA device: run the gpu session on a GPU machine')"
    )
    session.run(python, "-c", probe)
    # With hatchling at hand, build in place: no isolated build environment to download.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") else []
    editables = [arg for package in find_packages() for arg in ("-e", package.as_posix())]
    session.run(python, "-m", "pip", "install", "--no-deps", *isolation, *editables, *CONSTRAINTS)
    dirs = _test_dirs(session)
    if any((ROOT / "integration_tests").rglob("test_*.py")):
        dirs.append("integration_tests")
    # Exit 5 (nothing selected) is fine: there may be no gpu test yet.
    session.run(
        python,
        "-m",
        "pytest",
        "-m",
        "gpu",
        *dirs,
        *session.posargs,
        env=TEST_ENV,
        success_codes=[0, 5],
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Each bench/*.py script in turn; each prints ratios measured in one run."""
    scripts = sorted(p for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_"))
    if not scripts:
        session.skip("bench/ holds no scripts yet")
    install_workspace(session)
    for script in scripts:
        session.run("python", script.relative_to(ROOT).as_posix(), *session.posargs, env=TEST_ENV)
