"""The records that plugins return from the registration hooks.

Every record is a frozen dataclass with a ``name`` and the name of the plugin that
provided it (``plugin``; filled in by the loader, so a plugin leaves it empty).
Capabilities are data on the record, so that ``ferrule plugins`` can print them and
selection can explain a refusal without running any plugin code.

Nothing here imports torch: records refer to heavy code through callables that
import it when they are called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

KERNEL_KINDS = ("linear", "attention", "moe", "norm", "rotary", "activation")
# Fused helpers of engine layers: RMSNorm with the residual add, rotary embedding of q and k,
# a gated MLP's activation times its up projection.
FUSED_KINDS = ("norm", "rotary", "activation")
ANY_PLATFORM = "*"


@dataclass(frozen=True)
class KernelRequest:
    """What a caller needs from a kernel: the layer's quantization and the data it sees.

    ``platform`` is a platform name (``cpu``, ``cuda``, ``rocm``); ``dtype`` is the
    activation dtype's short name (``float16``, ``bfloat16``, ``float32``);
    ``capability`` is the device's compute capability where the platform has one.
    Linear and MoE kernels read the quantization fields (``bits`` ... ``out_features``);
    attention kernels read ``head_dim`` and ``sliding_window`` instead (see
    :meth:`attention`); ``activation`` kernels read ``activation``, the model's
    ``hidden_act`` name (``"silu"``), which the kernel's ``check`` accepts or refuses.
    """

    platform: str
    bits: int = 16
    group_size: int = -1
    desc_act: bool = False
    sym: bool = True
    dtype: str = "float16"
    in_features: int = 0
    out_features: int = 0
    capability: tuple[int, int] | None = None
    head_dim: int = 0
    sliding_window: int | None = None
    activation: str = ""

    @classmethod
    def attention(
        cls,
        platform: str,
        dtype: str,
        head_dim: int,
        *,
        sliding_window: int | None = None,
        capability: tuple[int, int] | None = None,
    ) -> KernelRequest:
        """A request for an attention kernel over the paged KV cache."""
        return cls(
            platform=platform,
            dtype=dtype,
            head_dim=head_dim,
            sliding_window=sliding_window,
            capability=capability,
        )

    def describe(self) -> str:
        if self.activation:
            return f"activation {self.activation!r}, {self.dtype} on {self.platform}"
        if self.bits == 16 and not self.in_features and not self.head_dim:
            return f"{self.dtype} on {self.platform}"
        if self.head_dim:
            window = f", sliding window {self.sliding_window}" if self.sliding_window else ""
            return f"attention head_dim={self.head_dim}{window}, {self.dtype} on {self.platform}"
        group = "per-channel" if self.group_size == -1 else f"group_size={self.group_size}"
        order = ", act-order" if self.desc_act else ""
        grid = "sym" if self.sym else "asym"
        shape = f", {self.in_features}x{self.out_features}" if self.in_features else ""
        return f"{self.bits}-bit {group}{order}, {grid}, {self.dtype} on {self.platform}{shape}"


@dataclass(frozen=True)
class KernelSpec:
    """A kernel a plugin offers, with what it supports as data.

    ``factory(layer)`` builds the kernel for one layer (for ``linear``: a
    ``QuantLinear``) and returns an object with ``forward(x) -> Tensor``; it is the
    only place the plugin may import torch or compile anything. ``check(request)``
    adds refusals the data cannot express (a missing torch op, an unsupported shape)
    and returns ``None`` when the kernel can serve, else a reason.
    ``group_sizes=None`` means any group size; ``platforms`` may contain ``"*"``.

    ``preferred_rows=(lo, hi)`` (``hi=None``: no upper end) is the range of input rows
    (``M = x.numel() // in_features``) where a linear kernel is preferred: a layer builds each
    accepted kernel that is the best for some ``M`` and runs the one for the current ``M``
    (the highest priority among those preferring it, else the highest). A kernel must still
    be correct at every ``M``. Where the range depends on the layer's shape (a kernel ahead
    on wide layers from fewer rows than on narrow ones), ``preferred_rows_for(request)``
    returns it for that layer (its ``in_features`` and ``out_features``) and
    ``preferred_rows`` is the range listings show. ``sorted_groups=True`` asks the layer to permute its rows once
    so that ``g_idx`` is non-decreasing before the kernel is built (act-order layers then
    read whole groups in order, see ``QuantLinear.sort_groups``).

    Fused helpers (``kind="norm"``: RMSNorm with an optional residual add, factory(norm
    layer) -> ``forward(x, residual=None)``; ``kind="rotary"``: rotary embedding of queries
    and keys, factory(rotary layer) -> ``forward(positions, query, key)``; ``kind="activation"``:
    a gated MLP's ``act(gate) * up``, factory(MLP layer) -> ``forward(x)`` mapping ``x`` of
    shape ``[..., 2 * I]`` laid out ``[gate | up]`` to ``[..., I]``, with ``check`` refusing the
    ``request.activation`` names it does not compute) ignore the quantization fields; a rotary
    kernel may declare ``head_dims``.

    Attention kernels (``kind="attention"``) ignore the quantization fields; they declare
    ``head_dims`` (``None``: any) and whether they handle ``sliding_window`` layers, and
    their factory returns an object with
    ``forward(query, kv_cache, batch) -> Tensor`` (see :mod:`ferrule_core.forward_batch`).
    """

    name: str
    kind: str
    factory: Callable[..., Any]
    platforms: tuple[str, ...]
    bits: tuple[int, ...] = (2, 3, 4, 8)
    group_sizes: tuple[int, ...] | None = None
    desc_act: bool = True
    sym: bool = True
    asym: bool = True
    dtypes: tuple[str, ...] = ("float16", "bfloat16", "float32")
    min_capability: tuple[int, int] | None = None
    priority: int = 0
    check: Callable[[KernelRequest], str | None] | None = None
    preferred_rows: tuple[int, int | None] = (1, None)
    preferred_rows_for: Callable[[KernelRequest], tuple[int, int | None]] | None = None
    sorted_groups: bool = False
    head_dims: tuple[int, ...] | None = None
    sliding_window: bool = True
    description: str = ""
    plugin: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KERNEL_KINDS:
            raise ValueError(
                f"KernelSpec {self.name!r}: kind={self.kind!r} is not a kernel kind; "
                f"use one of {', '.join(KERNEL_KINDS)}"
            )
        _check_rows(self.name, "preferred_rows", self.preferred_rows)

    def rows_preferred(self, request: KernelRequest | None = None) -> tuple[int, int | None]:
        """The input rows where the kernel is preferred for ``request``'s layer."""
        if self.preferred_rows_for is None or request is None:
            return self.preferred_rows
        return _check_rows(self.name, "preferred_rows_for", self.preferred_rows_for(request))

    def prefers(self, rows: int, request: KernelRequest | None = None) -> bool:
        """Whether ``rows`` input rows lie in the kernel's preferred range (for ``request``)."""
        low, high = self.rows_preferred(request)
        return low <= rows and (high is None or rows <= high)

    def reject_reason(self, request: KernelRequest) -> str | None:
        """``None`` when this kernel can serve ``request``, else why not."""
        if ANY_PLATFORM not in self.platforms and request.platform not in self.platforms:
            return f"runs on {', '.join(self.platforms)}, not {request.platform}"
        if self.kind == "attention":
            reason = self._attention_reason(request)
        elif self.kind in FUSED_KINDS:
            reason = self._head_dim_reason(request)
        else:
            reason = self._quantization_reason(request)
        if reason is not None:
            return reason
        if request.dtype not in self.dtypes:
            return f"supports activations in {', '.join(self.dtypes)}, not {request.dtype}"
        if self.min_capability is not None:
            have = request.capability
            if have is None or tuple(have) < tuple(self.min_capability):
                need = ".".join(map(str, self.min_capability))
                got = "none" if have is None else ".".join(map(str, have))
                return f"needs compute capability {need} or newer, the device has {got}"
        if self.check is not None:
            return self.check(request)
        return None

    def _head_dim_reason(self, request: KernelRequest) -> str | None:
        if self.head_dims is not None and request.head_dim not in self.head_dims:
            return f"supports head dims {_join(self.head_dims)}, not {request.head_dim}"
        return None

    def _attention_reason(self, request: KernelRequest) -> str | None:
        reason = self._head_dim_reason(request)
        if reason is not None:
            return reason
        if request.sliding_window and not self.sliding_window:
            return "does not support sliding-window attention"
        return None

    def _quantization_reason(self, request: KernelRequest) -> str | None:
        if request.bits not in self.bits:
            return f"supports bits {_join(self.bits)}, not {request.bits}"
        if self.group_sizes is not None and request.group_size not in self.group_sizes:
            return f"supports group sizes {_join(self.group_sizes)}, not {request.group_size}"
        if request.desc_act and not self.desc_act:
            return "does not support act-order (desc_act)"
        if request.sym and not self.sym:
            return "supports only asymmetric grids"
        if not request.sym and not self.asym:
            return "supports only symmetric grids"
        return None

    def capabilities(self) -> dict[str, Any]:
        if self.kind in FUSED_KINDS:
            return {
                "kind": self.kind,
                "platforms": list(self.platforms),
                "head_dims": "any" if self.head_dims is None else list(self.head_dims),
                "dtypes": list(self.dtypes),
                "priority": self.priority,
            }
        if self.kind == "attention":
            return {
                "kind": self.kind,
                "platforms": list(self.platforms),
                "head_dims": "any" if self.head_dims is None else list(self.head_dims),
                "sliding_window": self.sliding_window,
                "dtypes": list(self.dtypes),
                "min_capability": None
                if self.min_capability is None
                else ".".join(map(str, self.min_capability)),
                "priority": self.priority,
            }
        return {
            "kind": self.kind,
            "platforms": list(self.platforms),
            "bits": list(self.bits),
            "group_sizes": "any" if self.group_sizes is None else list(self.group_sizes),
            "desc_act": self.desc_act,
            "sym": self.sym,
            "asym": self.asym,
            "dtypes": list(self.dtypes),
            "min_capability": None
            if self.min_capability is None
            else ".".join(map(str, self.min_capability)),
            "priority": self.priority,
            "preferred_rows": _rows(self.preferred_rows)
            + (" (by layer shape)" if self.preferred_rows_for is not None else ""),
            "sorted_groups": self.sorted_groups,
        }


@dataclass(frozen=True)
class ArchitectureSpec:
    """How ferrule handles one family of Hugging Face architectures.

    ``model_types`` are the ``config.json`` ``model_type`` values handled.
    The quantization layout describes the ``transformers`` model:
    ``blocks_path`` is the dotted path of the decoder blocks' ``ModuleList``;
    ``outside_modules`` the modules that run before the first block (embeddings,
    rotary embedding) and after the last (final norm, head);
    ``sequential_groups`` the block's linear sub-layers in true-sequential order,
    each group quantized together (for example q, k and v, which see the same input).
    ``engine_model`` is an import path ``"package.module:Class"`` of the serving model,
    resolved lazily; ``weight_map`` renames checkpoint keys for it.
    """

    name: str
    model_types: tuple[str, ...]
    blocks_path: str
    sequential_groups: tuple[tuple[str, ...], ...]
    outside_modules: tuple[str, ...] = ()
    engine_model: str | None = None
    weight_map: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    plugin: str = ""

    def __post_init__(self) -> None:
        if not self.model_types:
            raise ValueError(f"ArchitectureSpec {self.name!r} names no model_types")
        if not self.sequential_groups or not all(self.sequential_groups):
            raise ValueError(f"ArchitectureSpec {self.name!r} has an empty sequential group")

    @property
    def quantized_modules(self) -> tuple[str, ...]:
        return tuple(name for group in self.sequential_groups for name in group)

    def capabilities(self) -> dict[str, Any]:
        return {
            "model_types": list(self.model_types),
            "blocks_path": self.blocks_path,
            "sequential_groups": [list(group) for group in self.sequential_groups],
            "outside_modules": list(self.outside_modules),
            "engine_model": self.engine_model,
        }


@dataclass(frozen=True)
class QuantMethodSpec:
    """A quantization method (``gptq``, ``rtn``).

    ``config_type`` is the config dataclass the method accepts; ``quantize_layer`` is
    the per-layer function the calibration pipeline calls. ``row_separable`` says that the
    method quantizes each output row independently given the Hessian, so layers reading
    the same input (q, k, v) may be stacked into one call with the same result.
    """

    name: str
    quantize_layer: Callable[..., Any]
    config_type: type | None = None
    needs_calibration: bool = True
    row_separable: bool = False
    description: str = ""
    plugin: str = ""

    def capabilities(self) -> dict[str, Any]:
        config = None if self.config_type is None else self.config_type.__name__
        return {
            "config_type": config,
            "needs_calibration": self.needs_calibration,
            "row_separable": self.row_separable,
        }


@dataclass(frozen=True)
class SchedulerSpec:
    """A scheduling policy (``fcfs``, ``priority``); ``policy`` builds it."""

    name: str
    policy: Callable[..., Any]
    preemptive: bool = False
    description: str = ""
    plugin: str = ""

    def capabilities(self) -> dict[str, Any]:
        return {"preemptive": self.preemptive}


@dataclass(frozen=True)
class PlatformSpec:
    """A hardware platform.

    ``check()`` returns ``None`` when the platform is usable on this machine, else
    why not; ``memory()`` returns ``(total_bytes, available_bytes)`` of the device
    memory; ``capability()``, where given, the current device's compute capability
    (kernels declare a ``min_capability`` against it); ``device_type`` is the torch
    device type its tensors live on. The callables may import torch; selection calls
    them only when asked.
    """

    name: str
    device_type: str
    check: Callable[[], str | None]
    memory: Callable[[], tuple[int, int]]
    capability: Callable[[], tuple[int, int] | None] | None = None
    distributed_backend: str = "gloo"
    preferred_kernels: tuple[str, ...] = ()
    priority: int = 0
    description: str = ""
    plugin: str = ""

    def capabilities(self) -> dict[str, Any]:
        return {
            "device_type": self.device_type,
            "distributed_backend": self.distributed_backend,
            "preferred_kernels": list(self.preferred_kernels),
            "priority": self.priority,
        }


def _check_rows(name: str, field: str, rows: tuple[int, int | None]) -> tuple[int, int | None]:
    low, high = rows
    if low < 1 or (high is not None and high < low):
        raise ValueError(
            f"KernelSpec {name!r}: {field} gave {rows!r}; a row range must be (lo, hi) with "
            "1 <= lo <= hi, or (lo, None)"
        )
    return rows


def _rows(rows: tuple[int, int | None]) -> str:
    low, high = rows
    return f"{low}+" if high is None else f"{low}-{high}"


def _join(values: tuple[int, ...]) -> str:
    return ", ".join(str(v) for v in values)
