"""The GPTQ checkpoint format: tensor packing and the reference dequantize (``tensors``), and
round-to-nearest grids that produce packable weights (``grid``)."""

from ferrule_core.format.checkpoint import (
    holds_checkpoint,
    quantized_layers,
    read_checkpoint,
    read_weights,
    save_checkpoint,
)
from ferrule_core.format.grid import QuantizedWeight, fit_grid, pack, quantize_rtn
from ferrule_core.format.tensors import (
    CHECKPOINT_FORMATS,
    SUPPORTED_BITS,
    check_tensors,
    default_g_idx,
    dequantize,
    num_groups,
    pack_cols,
    pack_rows,
    unpack_cols,
    unpack_rows,
    zeros_v1_to_v2,
    zeros_v2_to_v1,
)

__all__ = [
    "CHECKPOINT_FORMATS",
    "SUPPORTED_BITS",
    "QuantizedWeight",
    "check_tensors",
    "default_g_idx",
    "dequantize",
    "fit_grid",
    "holds_checkpoint",
    "num_groups",
    "pack",
    "pack_cols",
    "pack_rows",
    "quantize_rtn",
    "quantized_layers",
    "read_checkpoint",
    "read_weights",
    "save_checkpoint",
    "unpack_cols",
    "unpack_rows",
    "zeros_v1_to_v2",
    "zeros_v2_to_v1",
]
