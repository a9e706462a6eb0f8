"""The CUDA platform: NVIDIA GPUs through a CUDA build of torch.

Each function imports torch when it is called, never at import. ``check()`` returns ``None``
when torch is a CUDA build (not ROCm: torch reports AMD GPUs as ``cuda`` devices too, and
ferrule calls those the ``rocm`` platform) and sees a device, else the reason it cannot be used.
``memory()`` is ``(total, free)`` bytes of the current device as the driver reports them
(``torch.cuda.mem_get_info``), so memory held by other processes counts as used.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path


def torch_build() -> dict[str, str | None] | None:
    """``__version__``, ``cuda`` and ``hip`` of the installed torch, read from its
    ``version.py`` without importing torch (listing plugins must stay light); ``None`` when
    torch is not installed or the file does not read as expected."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        text = (Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text()
    except OSError:
        return None
    found: dict[str, str | None] = {}
    for name in ("__version__", "cuda", "hip"):
        match = re.search(rf"^{name}\b[^=\n]*=\s*(?:'([^']*)'|\"([^\"]*)\"|None)", text, re.M)
        if match is None:
            return None
        found[name] = match.group(1) or match.group(2)
    return found


def check() -> str | None:
    """``None`` when a CUDA device is usable from this torch, else why not.

    A CPU or ROCm build of torch is refused from its version file alone; torch is imported
    only to ask a CUDA build for a device (or when the version file does not read)."""
    build = torch_build()
    if build is None:
        try:
            import torch
        except ImportError:
            return "torch is not installed"
        build = {"__version__": torch.__version__, "cuda": torch.version.cuda}
        build["hip"] = torch.version.hip
    if build["hip"]:
        return (
            f"this torch is a ROCm build (HIP {build['hip']}): its GPUs are the rocm "
            "platform, not cuda"
        )
    if build["cuda"] is None:
        return (
            f"torch {build['__version__']} is built without CUDA (a CPU build); install a "
            "CUDA build of torch to use NVIDIA GPUs"
        )
    import torch

    if not torch.cuda.is_available():
        return (
            f"torch (CUDA {build['cuda']}) finds no usable CUDA device: no NVIDIA GPU is "
            "visible (see CUDA_VISIBLE_DEVICES), or the driver is missing or older than this "
            "CUDA needs"
        )
    return None


def memory() -> tuple[int, int]:
    """``(total, free)`` bytes of the current CUDA device."""
    import torch

    free, total = torch.cuda.mem_get_info()
    return int(total), int(free)


def capability() -> tuple[int, int] | None:
    """The current device's compute capability, ``None`` without a usable device."""
    import torch

    if not torch.cuda.is_available() or torch.version.hip:
        return None
    major, minor = torch.cuda.get_device_capability()
    return int(major), int(minor)
