"""The ``quant`` entry point: registers the ``gptq`` and ``rtn`` quantization methods.

Importing this module imports no torch: each ``quantize_layer`` imports its method when
first called. Both have the signature the calibration pipeline calls,
``quantize_layer(weight, hessian_or_None, config, **options) -> LayerResult``; the options
are the method's keyword arguments (:func:`ferrule_quant.gptq.gptq_quantize`:
``block_size``, ``mse``, ``scale_dtype``, ``name``; :func:`ferrule_quant.rtn.rtn_quantize`:
``mse``, ``scale_dtype``).
"""

from __future__ import annotations

from typing import Any

from ferrule_core import QuantizeConfig, QuantMethodSpec, hookimpl


def quantize_layer_gptq(weight, hessian, config: QuantizeConfig, **options: Any):
    """GPTQ of one layer; ``hessian`` is the ``[K, K]`` Hessian of its calibration inputs."""
    if hessian is None:
        raise ValueError(
            "the gptq method needs the layer's Hessian from calibration data, got None; "
            "run calibration, or use the rtn method, which needs no data"
        )
    from ferrule_quant.gptq import gptq_quantize

    return gptq_quantize(weight, hessian, config, **options)


def quantize_layer_rtn(weight, hessian, config: QuantizeConfig, **options: Any):
    """Round-to-nearest of one layer; ``hessian`` is ignored (``None`` is expected)."""
    from ferrule_quant.rtn import rtn_quantize

    options.pop("name", None)  # labels GPTQ's damping messages; RTN has none
    return rtn_quantize(weight, config, **options)


@hookimpl
def ferrule_register_quant_methods():
    return [
        QuantMethodSpec(
            name="gptq",
            quantize_layer=quantize_layer_gptq,
            config_type=QuantizeConfig,
            needs_calibration=True,
            row_separable=True,
            description="GPTQ (Frantar et al. 2022): second-order error feedback from "
            "calibration inputs; act-order, static groups, damping",
        ),
        QuantMethodSpec(
            name="rtn",
            quantize_layer=quantize_layer_rtn,
            config_type=QuantizeConfig,
            needs_calibration=False,
            row_separable=True,
            description="round-to-nearest on per-group min/max (or MSE) grids; no data needed",
        ),
    ]
