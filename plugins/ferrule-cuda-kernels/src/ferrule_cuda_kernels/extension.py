"""Build the CUDA extension of the ``cuda-gptq-*`` kernels on first use, into a cache.

Installing the plugin compiles nothing. The first time selection considers the kernel for a
CUDA device, :func:`build_problem` compiles ``csrc/`` with ``torch.utils.cpp_extension.load``
for that device's architecture only (``-gencode=arch=compute_XY,code=sm_XY``) and imports the
module; later processes find it built and only load it. A build that cannot run (no CUDA
toolkit, no ninja) or fails (a compiler error) is remembered for the process and becomes the
kernel's refusal reason, so selection falls back to the next kernel instead of failing.

Needs: a CUDA build of torch, the CUDA toolkit's ``nvcc`` (found by torch: ``CUDA_HOME``,
``nvcc`` on ``PATH``, or ``/usr/local/cuda``) of the CUDA major version torch was built with,
a host C++ compiler, and ``ninja`` (``pip install ninja``: ``cpp_extension.load`` builds with
it and has no fallback).

Where it goes: ``$TORCH_EXTENSIONS_DIR`` if set, else ``$XDG_CACHE_HOME/ferrule/
torch_extensions`` (``~/.cache/ferrule/torch_extensions``), in a folder named after the
Python, torch and CUDA versions, the architecture, and a hash of the sources, so environments
and source versions never share a build.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

NAME = "ferrule_cuda_gptq_gemv"
CSRC = Path(__file__).with_name("csrc")
SOURCES = ("gptq_gemv.cpp", "gptq_gemv.cu", "gptq_mma.cu", "gptq_wgmma.cu")
HEADERS = ("gptq_gemv.h", "kernel_common.cuh")
# -ftz=false: the kernel multiplies denormal floats on purpose (see gptq_gemv.cu); a flag that
# flushes them to zero (--use_fast_math) would zero every weight.
NVCC_FLAGS = ("-O3", "-ftz=false")
CXX_FLAGS = ("-O3",)
REASON_CHARS = 1500


def cache_root(environ: Mapping[str, str] | None = None, home: Path | None = None) -> Path:
    """The folder that holds ferrule's compiled extensions."""
    environ = os.environ if environ is None else environ
    if environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(environ["TORCH_EXTENSIONS_DIR"])
    cache = environ.get("XDG_CACHE_HOME") or (home or Path.home()) / ".cache"
    return Path(cache) / "ferrule" / "torch_extensions"


def source_hash(folder: Path = CSRC) -> str:
    """A short hash of the sources and headers: a changed file builds into a new folder."""
    digest = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        digest.update(name.encode())
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:12]


def build_tag(
    python: tuple[int, int],
    torch_version: str,
    cuda_version: str | None,
    capability: tuple[int, int],
    sources: str,
) -> str:
    """The build folder's name, e.g. ``py311_torch2.11.0-cu130_cuda13.0_sm90_<hash>``."""
    raw = (
        f"py{python[0]}{python[1]}_torch{torch_version}_cuda{cuda_version or 'none'}"
        f"_sm{capability[0]}{capability[1]}_{sources}"
    )
    return re.sub(r"[^A-Za-z0-9._-]", "-", raw)


def build_directory(capability: tuple[int, int], root: Path | None = None) -> Path:
    """Where the extension for ``capability`` is built with this Python and torch."""
    import torch

    tag = build_tag(
        sys.version_info[:2], torch.__version__, torch.version.cuda, capability, source_hash()
    )
    return (root or cache_root()) / tag / NAME


def arch_flags(capability: tuple[int, int]) -> list[str]:
    """nvcc flags that build machine code for exactly this architecture.

    Naming an architecture also stops torch adding its own list (``TORCH_CUDA_ARCH_LIST`` or
    every visible GPU), which would compile each kernel several times. sm_90 builds for
    ``sm_90a``, whose machine code runs only on sm_90 devices (as this build does) and has
    ``wgmma`` (``cuda-gptq-wgmma``).
    """
    major, minor = capability
    arch = f"{major}{minor}" + ("a" if (major, minor) == (9, 0) else "")
    return [f"-gencode=arch=compute_{arch},code=sm_{arch}"]


def toolchain_problem() -> str | None:
    """Why the extension cannot be built here (no CUDA torch, nvcc or ninja), or ``None``."""
    import torch

    if torch.version.cuda is None or torch.version.hip:
        return f"needs a CUDA build of torch (installed: torch {torch.__version__})"
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    nvcc = Path(home) / "bin" / ("nvcc.exe" if os.name == "nt" else "nvcc") if home else None
    if nvcc is None or not nvcc.exists():
        return (
            "compiles on first use and needs the CUDA toolkit's nvcc, which torch did not find "
            f"(CUDA_HOME={home or 'unset'}); install the CUDA {torch.version.cuda} toolkit "
            "and set CUDA_HOME"
        )
    if not cpp_extension.is_ninja_available():
        return (
            "compiles on first use with torch.utils.cpp_extension.load, which needs ninja: "
            "pip install ninja"
        )
    return None


def summarize_build_error(message: str, limit: int = REASON_CHARS) -> str:
    """The compiler's first error lines out of a build log, at most ``limit`` characters."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"\berror\b", line, re.IGNORECASE)]
    text = " | ".join(errors[:6] or lines[-6:])
    return text if len(text) <= limit else text[: limit - 3] + "..."


@functools.cache
def _build(capability: tuple[int, int]) -> tuple[Any, str | None]:
    """``(module, None)``, or ``(None, reason)`` when the extension cannot be had."""
    problem = toolchain_problem()
    if problem is not None:
        return None, problem
    from torch.utils import cpp_extension

    directory = build_directory(capability)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        module = cpp_extension.load(
            name=NAME,
            sources=[str(CSRC / name) for name in SOURCES],
            extra_cflags=list(CXX_FLAGS),
            extra_cuda_cflags=[*NVCC_FLAGS, *arch_flags(capability)],
            build_directory=str(directory),
            verbose=False,
        )
    except Exception as exc:  # a compiler error, a failed link or import: refuse, do not crash
        logger.warning("building %s in %s failed:\n%s", NAME, directory, exc)
        return None, f"building its CUDA extension failed ({summarize_build_error(str(exc))})"
    return module, None


def build_problem(capability: tuple[int, int]) -> str | None:
    """``None`` once the extension for ``capability`` is built and loaded, else why not."""
    return _build(tuple(capability))[1]


def load(capability: tuple[int, int]) -> Any:
    """The built extension module (``gptq_gemv``, ``gptq_mma``, ``gptq_wgmma`` and their
    plans); raises if unavailable."""
    module, problem = _build(tuple(capability))
    if module is None:
        raise RuntimeError(f"the cuda-gptq kernels' extension: {problem}")
    return module
