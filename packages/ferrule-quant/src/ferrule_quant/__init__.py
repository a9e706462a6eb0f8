"""ferrule's quantizer: GPTQ and RTN for one layer, and the Hessians they use.

Importing this package imports no torch; the names below load their module on first use.

- :class:`HessianAccumulator` (``hessian``): ``H = 2/n sum x x^T`` of a layer's inputs.
- :func:`gptq_quantize` / :class:`LayerResult` (``gptq``): GPTQ of one linear layer.
- :func:`rtn_quantize` (``rtn``): the round-to-nearest baseline.
- :func:`find_params` (``grid``): per-row min/max or MSE grids.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferrule_quant.gptq import DampingError, LayerResult, gptq_quantize
    from ferrule_quant.grid import find_params
    from ferrule_quant.hessian import HessianAccumulator
    from ferrule_quant.rtn import rtn_quantize

__version__ = "0.1.0"

# name -> module that defines it, imported on first access
_LAZY = {
    "DampingError": "ferrule_quant.gptq",
    "HessianAccumulator": "ferrule_quant.hessian",
    "LayerResult": "ferrule_quant.gptq",
    "find_params": "ferrule_quant.grid",
    "gptq_quantize": "ferrule_quant.gptq",
    "rtn_quantize": "ferrule_quant.rtn",
}

__all__ = [
    "DampingError",
    "HessianAccumulator",
    "LayerResult",
    "find_params",
    "gptq_quantize",
    "rtn_quantize",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ferrule_quant' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
