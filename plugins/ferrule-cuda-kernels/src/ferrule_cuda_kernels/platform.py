"""The CUDA platform: NVIDIA GPUs through a CUDA build of torch.

Each function imports torch when it is called, never at import. ``check()`` returns ``None``
when torch is a CUDA build (not ROCm: torch reports AMD GPUs as ``cuda`` devices too, and
ferrule calls those the ``rocm`` platform) and sees a device, else the reason it cannot be used.
``memory()`` is ``(total, free)`` bytes of the current device as the driver reports them
(``torch.cuda.mem_get_info``), so memory held by other processes counts as used.
"""

from __future__ import annotations


def check() -> str | None:
    """``None`` when a CUDA device is usable from this torch, else why not."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if torch.version.hip:
        return (
            f"this torch is a ROCm build (HIP {torch.version.hip}): its GPUs are the rocm "
            "platform, not cuda"
        )
    if torch.version.cuda is None:
        return (
            f"torch {torch.__version__} is built without CUDA (a CPU build); install a CUDA "
            "build of torch to use NVIDIA GPUs"
        )
    if not torch.cuda.is_available():
        return (
            f"torch (CUDA {torch.version.cuda}) finds no usable CUDA device: no NVIDIA GPU is "
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
