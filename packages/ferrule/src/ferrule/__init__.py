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
    "LLM",
    "ArchitectureSpec",
    "AsyncLLM",
    "ConfigError",
    "FerruleError",
    "KernelRequest",
    "KernelSpec",
    "PlatformSpec",
    "QuantLinear",
    "QuantMethodSpec",
    "QuantizeConfig",
    "Registry",
    "SamplingParams",
    "SchedulerSpec",
    "SelectionError",
    "hookimpl",
    "load_plugins",
    "select_kernel",
    "select_platform",
]


def __getattr__(name: str) -> Any:
    # These import torch: only when asked for, so `import ferrule` stays light.
    if name == "QuantLinear":
        from ferrule_core.quant_linear import QuantLinear

        return QuantLinear
    if name == "AsyncLLM":
        from ferrule_engine.async_llm import AsyncLLM

        return AsyncLLM
    if name == "LLM":
        from ferrule_engine.llm import LLM

        return LLM
    if name == "SamplingParams":
        from ferrule_engine.sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'ferrule' has no attribute {name!r}")
