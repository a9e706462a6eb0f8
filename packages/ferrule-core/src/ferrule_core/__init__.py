"""ferrule's core: the plugin contracts, the GPTQ format, and ``QuantLinear``.

Importing this package imports no torch; the torch-backed pieces (``QuantLinear``, the
``format`` tensors) load when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ferrule_core.config import QuantizeConfig
from ferrule_core.errors import (
    ConfigError,
    FerruleError,
    FormatError,
    NotRegisteredError,
    PluginError,
    SelectionError,
)
from ferrule_core.plugins import default_registry, hookimpl, load_plugins
from ferrule_core.registry import PluginFailure, PluginInfo, Registry
from ferrule_core.specs import (
    ArchitectureSpec,
    KernelRequest,
    KernelSpec,
    PlatformSpec,
    QuantMethodSpec,
    SchedulerSpec,
)

if TYPE_CHECKING:
    from ferrule_core.quant_linear import QuantLinear

__version__ = "0.1.0"

__all__ = [
    "ArchitectureSpec",
    "ConfigError",
    "FerruleError",
    "FormatError",
    "KernelRequest",
    "KernelSpec",
    "NotRegisteredError",
    "PlatformSpec",
    "PluginError",
    "PluginFailure",
    "PluginInfo",
    "QuantLinear",
    "QuantMethodSpec",
    "QuantizeConfig",
    "Registry",
    "SchedulerSpec",
    "SelectionError",
    "default_registry",
    "hookimpl",
    "load_plugins",
    "select_kernel",
    "select_platform",
]


def select_kernel(kind: str, request: KernelRequest, choice: str | None = None) -> KernelSpec:
    """The best installed ``kind`` kernel for ``request`` (see ``Registry.select_kernel``)."""
    return default_registry().select_kernel(kind, request, choice)


def select_platform(choice: str | None = None) -> PlatformSpec:
    """The best installed platform usable here (see ``Registry.select_platform``)."""
    return default_registry().select_platform(choice)


def __getattr__(name: str) -> Any:
    if name == "QuantLinear":
        from ferrule_core.quant_linear import QuantLinear

        return QuantLinear
    raise AttributeError(f"module 'ferrule_core' has no attribute {name!r}")
