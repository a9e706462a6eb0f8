"""``QuantLinear``: a linear layer that holds GPTQ tensors and runs the selected kernel.

The buffers follow the GPTQ tensor format with the zero points in ``gptq_v2`` meaning
(the true zero point; v1 checkpoints are converted when they are read):
``qweight`` int32 ``[K*bits/32, N]``, ``qzeros`` int32 ``[G, N*bits/32]``,
``scales`` ``[G, N]``, ``g_idx`` int32 ``[K]``, optional ``bias`` ``[N]``.

The kernel is chosen on the first forward for the input's device and dtype, through the
registry (highest-priority kernel that accepts the layer), or fixed by ``kernel=NAME``.
It is chosen again only when the device or dtype changes or the buffers are replaced.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ferrule_core.config import SUPPORTED_BITS, packing_problems
from ferrule_core.errors import ConfigError
from ferrule_core.format import check_tensors, default_g_idx, dequantize, num_groups
from ferrule_core.format.grid import pack, quantize_rtn
from ferrule_core.registry import Registry
from ferrule_core.specs import KernelRequest, KernelSpec


class QuantLinear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        group_size: int,
        *,
        bias: bool = False,
        desc_act: bool = False,
        sym: bool = True,
        dtype: torch.dtype = torch.float16,
        device: torch.device | str | None = None,
        kernel: str | None = None,
        registry: Registry | None = None,
    ):
        super().__init__()
        problems = _shape_problems(in_features, out_features, bits, group_size)
        if problems:
            raise ConfigError(problems)
        self.in_features = in_features
        self.out_features = out_features
        self.bits = bits
        self.group_size = group_size
        self.desc_act = desc_act
        self.sym = sym
        self.kernel_choice = kernel
        self.registry = registry
        groups = num_groups(in_features, group_size)
        words = in_features * bits // 32
        self.register_buffer(
            "qweight", torch.zeros(words, out_features, dtype=torch.int32, device=device)
        )
        self.register_buffer(
            "qzeros",
            torch.zeros(groups, out_features * bits // 32, dtype=torch.int32, device=device),
        )
        self.register_buffer(
            "scales", torch.zeros(groups, out_features, dtype=dtype, device=device)
        )
        self.register_buffer("g_idx", default_g_idx(in_features, group_size, device=device))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device))
        else:
            self.bias = None
        self._kernel: Any = None
        self._kernel_key: tuple[Any, ...] | None = None
        self.kernel_spec: KernelSpec | None = None

    # --- building --------------------------------------------------------------------

    @classmethod
    def from_tensors(
        cls,
        tensors: dict[str, torch.Tensor],
        bits: int,
        group_size: int,
        *,
        bias: torch.Tensor | None = None,
        desc_act: bool = False,
        sym: bool = True,
        kernel: str | None = None,
        registry: Registry | None = None,
    ) -> QuantLinear:
        """A layer from ``gptq_v2`` tensors ``qweight``, ``qzeros``, ``scales``, ``g_idx``."""
        in_features = tensors["g_idx"].numel()
        out_features = tensors["scales"].shape[-1]
        check_tensors(
            tensors["qweight"],
            tensors["qzeros"],
            tensors["scales"],
            tensors["g_idx"],
            bits,
            in_features,
            out_features,
            group_size,
        )
        layer = cls(
            in_features,
            out_features,
            bits,
            group_size,
            bias=bias is not None,
            desc_act=desc_act,
            sym=sym,
            dtype=tensors["scales"].dtype,
            device=tensors["qweight"].device,
            kernel=kernel,
            registry=registry,
        )
        with torch.no_grad():
            for name in ("qweight", "qzeros", "scales", "g_idx"):
                getattr(layer, name).copy_(tensors[name])
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        bits: int,
        group_size: int,
        *,
        sym: bool = True,
        dtype: torch.dtype = torch.float16,
        kernel: str | None = None,
        registry: Registry | None = None,
    ) -> QuantLinear:
        """Round-to-nearest quantization of an ``nn.Linear`` (no calibration)."""
        quantized = quantize_rtn(linear.weight.detach(), bits, group_size, sym=sym)
        bias = None if linear.bias is None else linear.bias.detach().to(dtype)
        return cls.from_tensors(
            pack(quantized, scale_dtype=dtype),
            bits,
            group_size,
            bias=bias,
            sym=sym,
            kernel=kernel,
            registry=registry,
        )

    # --- running ---------------------------------------------------------------------

    def kernel_request(self, device: torch.device, dtype: torch.dtype) -> KernelRequest:
        capability = None
        if device.type == "cuda":
            capability = tuple(torch.cuda.get_device_capability(device))
        return KernelRequest(
            platform=platform_of(device),
            bits=self.bits,
            group_size=self.group_size,
            desc_act=self.desc_act,
            sym=self.sym,
            dtype=str(dtype).removeprefix("torch."),
            in_features=self.in_features,
            out_features=self.out_features,
            capability=capability,
        )

    def select_kernel(self, device: torch.device, dtype: torch.dtype) -> KernelSpec:
        """Choose (and build) the kernel for inputs on ``device`` in ``dtype``."""
        from ferrule_core.plugins import default_registry

        registry = self.registry if self.registry is not None else default_registry()
        spec = registry.select_kernel(
            "linear", self.kernel_request(device, dtype), choice=self.kernel_choice
        )
        self._kernel = spec.factory(self)
        self._kernel_key = (device, dtype)
        self.kernel_spec = spec
        return spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"QuantLinear expects inputs with last dimension {self.in_features}, "
                f"got shape {tuple(x.shape)}"
            )
        if self._kernel_key != (x.device, x.dtype):
            self.select_kernel(x.device, x.dtype)
        out = self._kernel.forward(x)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out

    def dequantize_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The float weight in ``nn.Linear`` layout ``[out_features, in_features]``."""
        weight = dequantize(
            self.qweight, self.qzeros, self.scales, self.g_idx, self.bits, dtype=dtype
        )
        return weight.t()

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .half(): buffers move, rebind
        self._forget_kernel()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):  # buffers change in place
        self._forget_kernel()
        return super()._load_from_state_dict(*args, **kwargs)

    def _forget_kernel(self) -> None:
        self._kernel = None
        self._kernel_key = None
        self.kernel_spec = None

    def extra_repr(self) -> str:
        kernel = self.kernel_spec.name if self.kernel_spec else "not chosen yet"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, desc_act={self.desc_act}, sym={self.sym}, "
            f"bias={self.bias is not None}, kernel={kernel}"
        )


def platform_of(device: torch.device) -> str:
    """The platform name for a torch device (ROCm builds report ``cuda`` devices)."""
    if device.type == "cuda" and torch.version.hip:
        return "rocm"
    return device.type


def _shape_problems(in_features: int, out_features: int, bits: int, group_size: int) -> list[str]:
    if bits not in SUPPORTED_BITS:
        return [f"bits={bits!r} is not supported: use one of {', '.join(map(str, SUPPORTED_BITS))}"]
    problems = packing_problems("QuantLinear", in_features, out_features, bits)
    if group_size != -1 and group_size <= 0:
        problems.append(f"group_size={group_size!r} is invalid: use -1 or a positive size")
    return problems
