"""``triton-gptq``: the kernel object ``QuantLinear`` builds for a layer.

``forward(x)`` computes ``x[..., input_perm] @ W`` (the layer's rows are sorted by group
once, ``KernelSpec.sorted_groups``; ``handles_input_perm = True``: at one row the programs
gather ``x`` as they load it; from two rows on ``x`` is gathered once before the launch
(:func:`~ferrule_triton_kernels.gather.gather_columns`), because gathering it per K block
keeps Triton from pipelining the loads of ``x``: 1.1-13x slower than in-order layers at
M = 2 to 256 with the transposed tiles, H100, 2026-11-27. The up-front gather takes 2-5 us
at M = 16 (``index_select`` 5-6 us) and, gathering whole rows on chip from 64 rows, 8-17 us
at M = 256 and 8-67 us at M = 1024 (K = 4096 to 28,672; by column blocks it took up to
435 us), same card). Per call it looks up
the launch configuration for the number of rows ``M``
(:func:`~ferrule_triton_kernels.configs.configs_for`, memoized per ``M``) and runs the
small-batch split-K program or the tiled GEMM. Bias is added by ``QuantLinear``.
Activations in float16, bfloat16 and float32; the weight is dequantized to the activation
dtype in registers and every product accumulates in float32 (float32 activations multiply
in full precision, not TF32).

Both programs compute the transposed product, ``out^T = W^T @ x^T`` per tile, so that the
dequantized weight is the tensor cores' left operand (which Hopper's wgmma can read from
registers, if the compiler keeps it there; output columns fill its 64-row side) and ``x``
streams through shared memory. On an H100 this took M = 16 from 0.9x to 1.91x of fp16
cuBLAS, M = 64 to 1.35x and M = 256 to 1024 from 0.45-0.55x to 0.60-0.72x
(:mod:`ferrule_triton_kernels.dequant` says more). The M = 1 program reduces without
``tl.dot``.

Launches depend only on the input's shape, dtype and strides, never on values, so a call
can be captured in a CUDA graph.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import torch
from torch import Tensor
from triton.runtime.errors import OutOfResources

from ferrule_triton_kernels.configs import (
    DEFAULT_SMS,
    INTERPRETER_CONFIGS,
    TileConfig,
    configs_for,
    smaller,
)
from ferrule_triton_kernels.gather import gather_columns
from ferrule_triton_kernels.gptq_gemm import gemm, gptq_gemm_kernel
from ferrule_triton_kernels.gptq_gemv import gemv, gptq_gemv_kernel
from ferrule_triton_kernels.operands import GptqOperands

logger = logging.getLogger(__name__)

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MEMO_LIMIT = 4096  # distinct row counts remembered (prefill sees many)
GATHER_ONCE_ROWS = 2  # from this many rows x is gathered up front, not inside the programs


class TritonGptqLinear:
    """``forward(x) = x @ W`` for a ``QuantLinear`` of 2, 3, 4 or 8 bits on a GPU.

    ``table`` replaces :data:`~ferrule_triton_kernels.configs.CONFIGS` (for tuning and
    tests); on CPU tensors (the interpreter) the default is ``INTERPRETER_CONFIGS``.
    """

    name = "triton-gptq"
    handles_input_perm = True

    def __init__(self, layer: torch.nn.Module, table: Mapping[int, TileConfig] | None = None):
        device = layer.qweight.device
        _check_device(device)
        self.operands = GptqOperands.from_layer(layer)
        self._in_order = dataclasses.replace(self.operands, perm=None)  # for pre-gathered x
        self.device = device
        if device.type == "cuda":
            self.table = table
            self.sms = torch.cuda.get_device_properties(device).multi_processor_count
        else:
            self.table = INTERPRETER_CONFIGS if table is None else table
            self.sms = DEFAULT_SMS
        self._configs: dict[int, TileConfig] = {}
        self._fitted: dict[TileConfig, TileConfig] = {}  # what fits this device's memory

    def config(self, m: int) -> TileConfig:
        """The resolved launch configuration for ``m`` input rows."""
        config = self._configs.get(m)
        if config is None:
            ops = self.operands
            config = configs_for(
                m,
                ops.in_features,
                ops.out_features,
                bits=ops.bits,
                group_size=ops.group_size,
                sms=self.sms,
                table=self.table,
            )
            if len(self._configs) >= MEMO_LIMIT:
                self._configs.clear()
            self._configs[m] = config
        return config

    def forward(self, x: Tensor) -> Tensor:
        ops = self.operands
        if x.dtype not in DTYPES:
            names = ", ".join(str(d).removeprefix("torch.") for d in DTYPES)
            raise TypeError(f"triton-gptq takes activations in {names}, got {x.dtype}")
        if x.device != self.device:
            raise ValueError(f"triton-gptq: the input is on {x.device}, the layer on {self.device}")
        if x.shape[-1] != ops.in_features:
            raise ValueError(
                f"triton-gptq expects inputs with last dimension {ops.in_features}, "
                f"got shape {tuple(x.shape)}"
            )
        rows = x.reshape(-1, ops.in_features)  # a view when it can be: strides go to the program
        if rows.shape[0] == 0:
            return x.new_empty(*x.shape[:-1], ops.out_features)
        operands = ops
        if ops.perm is not None and rows.shape[0] >= GATHER_ONCE_ROWS:
            # Gathering x per K block inside the tile loop cost act-order layers 1.1-13x
            # (H100, 2026-11-27); one gather up front is one small launch.
            rows = gather_columns(rows, ops.perm)
            operands = self._in_order
        out = self._run(rows, self.config(rows.shape[0]), operands)
        return out.reshape(*x.shape[:-1], ops.out_features)

    def _run(self, rows: Tensor, wanted: TileConfig, operands: GptqOperands) -> Tensor:
        """Launch ``wanted``, shrunk while the device lacks the shared memory for it."""
        config = self._fitted.get(wanted, wanted)
        while True:
            program = gemv if config.program == "gemv" else gemm
            try:
                out = program(rows, operands, config)
            except OutOfResources as error:  # raised before anything is launched
                fitted = smaller(config, self.operands.bits)
                if fitted is None:
                    raise
                logger.info("triton-gptq: %s; retrying with %s", error, fitted)
                config = fitted
                continue
            self._fitted[wanted] = config
            return out


def _check_device(device: torch.device) -> None:
    if device.type == "cuda":
        return
    if device.type != "cpu":
        raise ValueError(f"triton-gptq runs on CUDA and ROCm devices, not {device.type}")
    from triton.runtime.interpreter import InterpretedFunction

    if not all(isinstance(k, InterpretedFunction) for k in (gptq_gemv_kernel, gptq_gemm_kernel)):
        raise ValueError(
            "triton-gptq runs on CPU tensors only in Triton's interpreter, and its programs "
            "were defined without it: set TRITON_INTERPRET=1 before ferrule_triton_kernels' "
            "kernel modules are imported"
        )
