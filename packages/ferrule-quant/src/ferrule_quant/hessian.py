"""The GPTQ Hessian of one linear layer: ``H = 2/n * sum_t x_t x_t^T`` over its input tokens.

GPTQ minimises ``||X W^T - X Wq^T||^2`` per layer, whose Hessian in ``W`` is ``2 X^T X``; the
calibration pipeline feeds the layer's inputs here batch by batch.

``n`` counts tokens: every row of the inputs flattened to ``[-1, K]`` is one sample, as
GPTQModel counts them. (The original reference counted sequences, the leading dimension,
which scales ``H`` by the sequence length; GPTQ's result does not change when ``H`` is
scaled, only the reported loss does.)

Accumulation is a running average in float32, as in the reference: each batch rescales the
old ``H`` by ``n_old / n_new`` and adds ``2 / n_new * X^T X`` in one ``addmm``. Entries stay
of the size of the average ``x x^T`` however many tokens are seen, so nothing grows without
bound, and float32 rounding stays relative to that average. Inputs of any floating dtype are
cast to float32 before the product.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor


@contextmanager
def _exact_tf32(dtype: torch.dtype, device: torch.device) -> Iterator[None]:
    """Let CUDA use TF32 tensor cores for ``x^T x`` when ``x`` came in half precision.

    TF32 keeps 10 mantissa bits and float32's exponent, so every float16 and bfloat16 value
    converts exactly: the products are exact and still accumulate in float32, at several
    times the speed of plain float32. Inputs that were float32 keep full float32.
    """
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        yield
        return
    matmul = torch.backends.cuda.matmul
    old = matmul.allow_tf32
    matmul.allow_tf32 = True
    try:
        yield
    finally:
        matmul.allow_tf32 = old


class HessianAccumulator:
    """Running ``H = 2/n * sum x x^T`` (float32 ``[K, K]``) of a layer with ``K`` inputs.

    ``device=None`` places ``H`` on the device of the first batch; otherwise batches are
    moved to ``device``.
    """

    def __init__(self, in_features: int, device=None):
        if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features <= 0:
            raise ValueError(f"in_features={in_features!r} must be a positive integer")
        self.in_features = in_features
        self._device = None if device is None else torch.device(device)
        self._hessian: Tensor | None = None
        self._nsamples = 0

    def add_batch(self, inputs: Tensor) -> None:
        """Add the layer inputs ``[..., K]``; every row of the ``[-1, K]`` view is one token."""
        if inputs.dim() == 0 or inputs.shape[-1] != self.in_features:
            raise ValueError(
                f"inputs of shape {tuple(inputs.shape)} do not fit a layer with "
                f"in_features={self.in_features}: the last dimension must be {self.in_features}"
            )
        if not inputs.dtype.is_floating_point:
            raise ValueError(f"inputs must be floating point, got dtype {inputs.dtype}")
        if self._hessian is None:
            device = self._device if self._device is not None else inputs.device
            self._hessian = torch.zeros(
                self.in_features, self.in_features, dtype=torch.float32, device=device
            )
        x = inputs.detach().reshape(-1, self.in_features)
        x = x.to(device=self._hessian.device, dtype=torch.float32)
        count = x.shape[0]
        if count == 0:  # an MoE expert may receive no tokens in a batch
            return
        total = self._nsamples + count
        with _exact_tf32(inputs.dtype, self._hessian.device):
            self._hessian.addmm_(x.t(), x, beta=self._nsamples / total, alpha=2.0 / total)
        self._nsamples = total

    @property
    def hessian(self) -> Tensor:
        """``H`` itself (not a copy): float32 ``[K, K]``, zeros before the first batch."""
        if self._hessian is None:
            device = self._device if self._device is not None else "cpu"
            return torch.zeros(
                self.in_features, self.in_features, dtype=torch.float32, device=device
            )
        return self._hessian

    @property
    def nsamples(self) -> int:
        """Tokens seen so far."""
        return self._nsamples
