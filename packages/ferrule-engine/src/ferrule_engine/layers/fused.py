"""Optional kernels chosen through the registry: dense ``linear``, ``norm``, ``rotary``.

An engine layer that has a fast or fused form (RMSNorm with the residual add, rotary embedding of
queries and keys) asks the registry for a kernel of that kind on the first call for the
input's device and dtype; a platform plugin may offer one (``ferrule-triton-kernels`` does
for GPUs), otherwise, or when every candidate refuses, the layer computes with torch ops.
On a GPU this saves launches: RMSNorm in torch ops is about seven kernels, the rotary
embedding about twenty.
"""

from __future__ import annotations

from typing import Any

import torch


class KernelDispatch:
    """The ``kind`` kernel a layer runs, by input device and dtype, or ``None`` (use torch).

    ``request`` holds fixed ``KernelRequest`` fields (``head_dim=...``); :meth:`kernel` may add
    per-call ones and extra key parts (selection runs again when the key changes).
    """

    def __init__(self, kind: str, registry: Any = None, **request: Any):
        self.kind = kind
        self.registry = registry
        self.request = request
        self._key: tuple[Any, ...] | None = None
        self._kernel: Any = None
        self.spec: Any = None

    def kernel(self, layer: torch.nn.Module, x: torch.Tensor, *key: Any, **request: Any) -> Any:
        full_key = (x.device, x.dtype, *key)
        if full_key != self._key:
            self.spec = select_optional_kernel(
                self.kind, self.registry, x, **self.request, **request
            )
            self._kernel = None if self.spec is None else self.spec.factory(layer)
            self._key = full_key
        return self._kernel

    def forget(self) -> None:
        self._key = None
        self._kernel = None
        self.spec = None


class FusedModule(torch.nn.Module):
    """A layer with a fused form: its ``fused`` :class:`KernelDispatch` chooses again once the
    module is moved or cast (a kernel object may hold the layer's tensors as they were)."""

    fused: KernelDispatch

    def _apply(self, fn, *args, **kwargs):
        self.fused.forget()
        return super()._apply(fn, *args, **kwargs)


def select_optional_kernel(kind: str, registry: Any, x: torch.Tensor, **request: Any) -> Any:
    """The best ``kind`` kernel for inputs like ``x`` (its device and dtype, plus the other
    ``KernelRequest`` fields given), or ``None`` when none accepts: the caller then computes
    with torch ops. Shared by the fused helpers and the dense linear layers."""
    from ferrule_core.errors import SelectionError
    from ferrule_core.plugins import default_registry
    from ferrule_core.quant_linear import platform_of
    from ferrule_core.specs import KernelRequest

    registry = registry if registry is not None else default_registry()
    capability = None
    if x.device.type == "cuda":
        capability = tuple(torch.cuda.get_device_capability(x.device))
    request = KernelRequest(
        platform=platform_of(x.device),
        dtype=str(x.dtype).removeprefix("torch."),
        capability=capability,
        **request,
    )
    try:
        return registry.select_kernel(kind, request)
    except SelectionError:
        return None
