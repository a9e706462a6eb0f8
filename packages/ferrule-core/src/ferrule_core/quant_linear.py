"""``QuantLinear``: a linear layer that holds GPTQ tensors and runs the selected kernel.

The buffers follow the GPTQ tensor format with the zero points in ``gptq_v2`` meaning
(the true zero point; v1 checkpoints are converted when they are read):
``qweight`` int32 ``[K*bits/32, N]``, ``qzeros`` int32 ``[G, N*bits/32]``,
``scales`` ``[G, N]``, ``g_idx`` int32 ``[K]``, optional ``bias`` ``[N]``.

The kernels are chosen on the first forward for the input's device and dtype, through the
registry, or fixed by ``kernel=NAME``: each accepted kernel that is the best for some number
of input rows is built (see ``KernelSpec.preferred_rows``), and each call runs the one for its
row count. They are chosen again only when the device or dtype changes or the buffers are
replaced.

A kernel that declares ``sorted_groups`` gets the layer with its rows sorted by group once
(:meth:`QuantLinear.sort_groups`): ``input_perm`` then holds the input feature each stored row
reads, and every kernel computes ``x[..., input_perm] @ W_sorted`` (kernels that set
``handles_input_perm`` gather ``x`` themselves; for the others the layer does). The layer's
``state_dict`` and :meth:`dequantize_weight` always give the original row order.

A model whose previous operation can emit its output permuted (a norm, another linear layer's
output features) folds an act-order layer's permutation into it once, at load:
:meth:`QuantLinear.input_order` is the order in which the layer's inputs would put its groups
in sequence, :meth:`QuantLinear.permute_inputs` makes the layer take its input in that order
(it is then an in-order layer, nothing to gather), and :meth:`QuantLinear.permute_outputs`
makes a producer layer emit its features in a given order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ferrule_core.config import SUPPORTED_BITS, packing_problems
from ferrule_core.errors import ConfigError
from ferrule_core.format import (
    check_tensors,
    default_g_idx,
    dequantize,
    num_groups,
    pack_cols,
    pack_rows,
    unpack_cols,
    unpack_rows,
)
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
        # Set by sort_groups(); not saved (state_dict writes the original row order).
        self.register_buffer("input_perm", None, persistent=False)
        self._kernel: Any = None
        self._kernel_key: tuple[Any, ...] | None = None
        self._plan: list[tuple[int, int | None, KernelSpec, Any]] = []
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
        """Choose (and build) the kernels for inputs on ``device`` in ``dtype``.

        Returns the kernel that serves one input row.
        """
        from ferrule_core.plugins import default_registry

        registry = self.registry if self.registry is not None else default_registry()
        plan = registry.select_kernels_by_rows(
            "linear", self.kernel_request(device, dtype), choice=self.kernel_choice
        )
        if any(spec.sorted_groups for _, _, spec in plan):
            self.sort_groups()
        built: dict[str, Any] = {}
        self._plan = []
        for low, high, spec in plan:
            if spec.name not in built:
                built[spec.name] = spec.factory(self)
            self._plan.append((low, high, spec, built[spec.name]))
        self._kernel_key = (device, dtype)
        self._use(1)
        return self.kernel_spec

    @property
    def kernel_specs(self) -> list[KernelSpec]:
        """The kernels built for this layer, in the order of the row counts they serve."""
        return [spec for _, _, spec, _ in self._plan]

    def _use(self, rows: int) -> None:
        for low, high, spec, kernel in self._plan:
            if rows >= low and (high is None or rows <= high):
                self.kernel_spec, self._kernel = spec, kernel
                return
        raise AssertionError(f"the kernel plan covers no row count {rows}")  # pragma: no cover

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"QuantLinear expects inputs with last dimension {self.in_features}, "
                f"got shape {tuple(x.shape)}"
            )
        if self._kernel_key != (x.device, x.dtype):
            self.select_kernel(x.device, x.dtype)
        if len(self._plan) > 1:
            self._use(x.numel() // self.in_features)
        kernel = self._kernel
        if self.input_perm is not None and not getattr(kernel, "handles_input_perm", False):
            x = x.index_select(-1, self.input_perm)
        out = kernel.forward(x)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out

    # --- row order -------------------------------------------------------------------

    def sort_groups(self) -> None:
        """Permute the stored rows once so that ``g_idx`` is non-decreasing.

        Act-order (``desc_act``) layers assign rows to groups through a permutation; sorted,
        each group's rows are contiguous, so a kernel reads a group's scales once and an
        act-order layer costs what an in-order one does. ``input_perm[i]`` is the input
        feature that stored row ``i`` reads. A layer already in order is left alone.
        """
        order = self.input_order()
        if order is None:
            return
        self._permute_rows(order)
        self.input_perm = order.to(torch.int32)

    def input_order(self) -> torch.Tensor | None:
        """For an act-order layer, the input order that puts its groups in sequence (the
        stable argsort of ``g_idx``); ``None`` for a layer already in order or already sorted
        for a kernel. A model that feeds the layer ``x[..., order]`` calls
        :meth:`permute_inputs` with it, and the layer runs as an in-order one."""
        if self.input_perm is not None:
            return None
        g_idx = self.g_idx.long()
        if bool((g_idx[1:] >= g_idx[:-1]).all()):
            return None
        return torch.argsort(g_idx, stable=True)

    @torch.no_grad()
    def permute_inputs(self, order: torch.Tensor) -> None:
        """From now on take ``x[..., order]`` where ``x`` was taken: the stored rows are permuted
        to match, so the outputs are unchanged. With :meth:`input_order`'s order ``g_idx``
        becomes non-decreasing; where it is then GPTQ's in-order assignment, ``desc_act`` is
        cleared, so any kernel may serve the layer."""
        order = check_permutation(order, self.in_features, "permute_inputs", "in_features")
        if self.input_perm is not None:
            raise ValueError(
                "permute_inputs: the layer's rows are already sorted for a kernel "
                "(input_perm is set); permute before the first forward"
            )
        self._permute_rows(order.to(self.qweight.device))
        in_order = default_g_idx(self.in_features, self.group_size, device=self.g_idx.device)
        if torch.equal(self.g_idx.long(), in_order.long()):
            self.desc_act = False
        self._forget_kernel()

    @torch.no_grad()
    def _permute_rows(self, order: torch.Tensor) -> None:
        """Stored row ``i`` (its codes and group) becomes the one that was row ``order[i]``."""
        codes = unpack_rows(self.qweight, self.bits)
        self.qweight.copy_(pack_rows(codes.index_select(0, order), self.bits))
        self.g_idx.copy_(self.g_idx.index_select(0, order))

    @torch.no_grad()
    def permute_outputs(self, order: torch.Tensor) -> None:
        """From now on compute ``forward(x)[..., order]``: the output features' columns of
        ``qweight``, ``scales``, ``qzeros`` and ``bias`` are permuted."""
        order = check_permutation(order, self.out_features, "permute_outputs", "out_features")
        order = order.to(self.qweight.device)
        self.qweight.copy_(self.qweight.index_select(1, order))
        self.scales.copy_(self.scales.index_select(1, order))
        zeros = unpack_cols(self.qzeros, self.bits).index_select(1, order)
        self.qzeros.copy_(pack_cols(zeros, self.bits))
        if self.bias is not None:
            self.bias.copy_(self.bias.index_select(0, order))
        self._forget_kernel()

    def _original_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``qweight`` and ``g_idx`` in the checkpoint's row order."""
        if self.input_perm is None:
            return self.qweight, self.g_idx
        order = self.input_perm.long()
        codes = unpack_rows(self.qweight, self.bits)
        original = torch.empty_like(codes)
        original[order] = codes
        g_idx = torch.empty_like(self.g_idx)
        g_idx[order] = self.g_idx
        return pack_rows(original, self.bits), g_idx

    def dequantize_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The float weight in ``nn.Linear`` layout ``[out_features, in_features]``."""
        qweight, g_idx = self._original_rows()
        weight = dequantize(qweight, self.qzeros, self.scales, g_idx, self.bits, dtype=dtype)
        return weight.t()

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .half(): buffers move, rebind
        self._forget_kernel()
        return super()._apply(fn, *args, **kwargs)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.input_perm is not None:  # the checkpoint's row order, never the sorted one
            qweight, g_idx = self._original_rows()
            destination[prefix + "qweight"] = qweight
            destination[prefix + "g_idx"] = g_idx

    def _load_from_state_dict(self, *args, **kwargs):  # buffers change in place
        self._forget_kernel()
        self.input_perm = None  # what is loaded is in the checkpoint's row order
        return super()._load_from_state_dict(*args, **kwargs)

    def _forget_kernel(self) -> None:
        self._kernel = None
        self._kernel_key = None
        self._plan = []
        self.kernel_spec = None

    def extra_repr(self) -> str:
        kernel = self.kernel_spec.name if self.kernel_spec else "not chosen yet"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, desc_act={self.desc_act}, sym={self.sym}, "
            f"bias={self.bias is not None}, kernel={kernel}"
        )


def check_permutation(order: torch.Tensor, size: int, where: str, what: str = "") -> torch.Tensor:
    """``order`` flattened to int64 after checking that it is a permutation of ``range(size)``;
    a ``ValueError`` naming ``where`` (and the size's name ``what``) otherwise."""
    order = order.long().flatten()
    if order.numel() != size or not torch.equal(torch.sort(order.cpu()).values, torch.arange(size)):
        named = f"{what}={size}" if what else str(size)
        raise ValueError(f"{where}: order must be a permutation of range({named})")
    return order


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
