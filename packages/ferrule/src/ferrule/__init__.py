"""ferrule: quantize large language models with GPTQ and serve them.

This is the face users import. It re-exports the stable API of the packages below it.
"""

from __future__ import annotations

from typing import Any

from ferrule_core import (
    ArchitectureSpec,
    ConfigError,
    FerruleError,
    KernelRequest,
    KernelSpec,
    PlatformSpec,
    QuantizeConfig,
    QuantMethodSpec,
    Registry,
    SchedulerSpec,
    SelectionError,
    hookimpl,
    load_plugins,
    select_kernel,
    select_platform,
)

__version__ = "0.1.0"

__all__ = [
    "ArchitectureSpec",
    "ConfigError",
    "FerruleError",
    "KernelRequest",
    "KernelSpec",
    "PlatformSpec",
    "QuantLinear",
    "QuantMethodSpec",
    "QuantizeConfig",
    "Registry",
    "SchedulerSpec",
    "SelectionError",
    "hookimpl",
    "load_plugins",
    "select_kernel",
    "select_platform",
]


def __getattr__(name: str) -> Any:
    if name == "QuantLinear":  # imports torch: only when asked for
        from ferrule_core.quant_linear import QuantLinear

        return QuantLinear
    raise AttributeError(f"module 'ferrule' has no attribute {name!r}")
