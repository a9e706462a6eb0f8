"""The registry: every record the installed plugins gave, resolved into plain objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ferrule_core.errors import NotRegisteredError, SelectionError
from ferrule_core.specs import (
    ArchitectureSpec,
    KernelRequest,
    KernelSpec,
    PlatformSpec,
    QuantMethodSpec,
    SchedulerSpec,
)


@dataclass(frozen=True)
class PluginInfo:
    """One loaded plugin: its entry-point name, the module, and the distribution it came in."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or whose hook raised."""

    name: str
    distribution: str | None
    error: str


@dataclass
class Registry:
    """What ``load_plugins()`` found. Lookups raise errors that list what is available."""

    plugins: list[PluginInfo] = field(default_factory=list)
    failures: list[PluginFailure] = field(default_factory=list)
    architectures: dict[str, ArchitectureSpec] = field(default_factory=dict)
    kernels: dict[str, KernelSpec] = field(default_factory=dict)
    quant_methods: dict[str, QuantMethodSpec] = field(default_factory=dict)
    schedulers: dict[str, SchedulerSpec] = field(default_factory=dict)
    platforms: dict[str, PlatformSpec] = field(default_factory=dict)

    # --- lookups ---------------------------------------------------------------------

    def architecture_for(self, model_type: str) -> ArchitectureSpec:
        for spec in self.architectures.values():
            if model_type in spec.model_types:
                return spec
        supported = sorted(t for s in self.architectures.values() for t in s.model_types)
        raise NotRegisteredError(
            f"model_type {model_type!r} is not supported by any installed plugin; supported: "
            f"{', '.join(supported) or 'none'}. Install the plugin for it (e.g. "
            "`pip install 'ferrule[llama]'`), or publish your own: a package with an entry point "
            "in the `ferrule` group whose module implements `ferrule_register_architectures` "
            "(see docs/plugins.md)"
        )

    def kernel(self, name: str) -> KernelSpec:
        return _lookup(self.kernels, name, "kernel")

    def quant_method(self, name: str) -> QuantMethodSpec:
        return _lookup(self.quant_methods, name, "quantization method")

    def scheduler(self, name: str) -> SchedulerSpec:
        return _lookup(self.schedulers, name, "scheduler")

    def platform(self, name: str) -> PlatformSpec:
        return _lookup(self.platforms, name, "platform")

    # --- selection -------------------------------------------------------------------

    def kernel_reasons(self, kind: str, request: KernelRequest) -> dict[str, str | None]:
        """Each candidate of ``kind``, highest priority first, with ``None`` or its refusal."""
        candidates = sorted(
            (k for k in self.kernels.values() if k.kind == kind),
            key=lambda k: (-k.priority, k.name),
        )
        return {k.name: k.reject_reason(request) for k in candidates}

    def select_kernel(
        self, kind: str, request: KernelRequest, choice: str | None = None
    ) -> KernelSpec:
        """The highest-priority ``kind`` kernel that accepts ``request``.

        With ``choice``, that kernel or a :class:`SelectionError` carrying every
        candidate's reason.
        """
        reasons = self.kernel_reasons(kind, request)
        if choice is not None:
            if choice not in reasons:
                raise SelectionError(
                    f"no {kind} kernel named {choice!r}; installed: {', '.join(reasons) or 'none'}",
                    {name: reason or "accepts" for name, reason in reasons.items()},
                )
            if reasons[choice] is None:
                return self.kernels[choice]
            raise SelectionError(
                f"{kind} kernel {choice!r} cannot serve {request.describe()}: {reasons[choice]}"
                + _explain(reasons),
                {name: reason or "accepts" for name, reason in reasons.items()},
            )
        for name, reason in reasons.items():
            if reason is None:
                return self.kernels[name]
        raise SelectionError(
            f"no installed {kind} kernel can serve {request.describe()}" + _explain(reasons),
            {name: reason or "accepts" for name, reason in reasons.items()},
        )

    def select_kernels_by_rows(
        self, kind: str, request: KernelRequest, choice: str | None = None
    ) -> list[tuple[int, int | None, KernelSpec]]:
        """Which kernel serves each number of input rows: ``[(lo, hi, spec), ...]``.

        The intervals cover every ``M >= 1`` in order (``hi=None``: no upper end). For each
        ``M`` the highest-priority accepting kernel whose preferred rows for this request
        (``preferred_rows``, or ``preferred_rows_for(request)``) contain ``M`` serves, else the
        highest-priority accepting kernel. With ``choice``, that kernel
        serves every ``M`` (or a :class:`SelectionError`, as :meth:`select_kernel`).
        """
        best = self.select_kernel(kind, request, choice)
        if choice is not None:
            return [(1, None, best)]
        accepted = [
            self.kernels[name]
            for name, reason in self.kernel_reasons(kind, request).items()
            if reason is None
        ]
        starts = {1}
        for spec in accepted:
            low, high = spec.rows_preferred(request)
            starts.add(low)
            if high is not None:
                starts.add(high + 1)
        plan: list[tuple[int, int | None, KernelSpec]] = []
        ordered = sorted(starts)
        for index, low in enumerate(ordered):
            high = ordered[index + 1] - 1 if index + 1 < len(ordered) else None
            spec = next((k for k in accepted if k.prefers(low, request)), best)
            if plan and plan[-1][2] is spec:
                plan[-1] = (plan[-1][0], high, spec)
            else:
                plan.append((low, high, spec))
        return plan

    def platform_reasons(self) -> dict[str, str | None]:
        candidates = sorted(self.platforms.values(), key=lambda p: (-p.priority, p.name))
        return {p.name: _safe_check(p) for p in candidates}

    def select_platform(self, choice: str | None = None) -> PlatformSpec:
        """The highest-priority platform usable on this machine, or ``choice`` if it is."""
        reasons = self.platform_reasons()
        if choice is not None and choice not in reasons:
            raise SelectionError(
                f"no platform named {choice!r}; installed: {', '.join(reasons) or 'none'} "
                "(platforms come from plugins, e.g. `pip install 'ferrule[cpu]'`)",
                {name: reason or "usable" for name, reason in reasons.items()},
            )
        names = [choice] if choice is not None else list(reasons)
        for name in names:
            if reasons[name] is None:
                return self.platforms[name]
        what = f"platform {choice!r} is not usable here" if choice else "no platform is usable"
        hint = "" if reasons else " (none installed; try `pip install 'ferrule[cpu]'`)"
        raise SelectionError(
            what + hint + _explain(reasons, "usable"),
            {name: reason or "usable" for name, reason in reasons.items()},
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description, as ``ferrule plugins --json`` prints it."""

        def family(records: dict[str, Any]) -> list[dict[str, Any]]:
            return [
                {
                    "name": r.name,
                    "plugin": r.plugin,
                    "description": r.description,
                    **r.capabilities(),
                }
                for r in records.values()
            ]

        return {
            "plugins": [vars(p) for p in self.plugins],
            "failures": [vars(f) for f in self.failures],
            "architectures": family(self.architectures),
            "kernels": family(self.kernels),
            "quant_methods": family(self.quant_methods),
            "schedulers": family(self.schedulers),
            "platforms": family(self.platforms),
        }


def _lookup(table: dict[str, Any], name: str, what: str) -> Any:
    try:
        return table[name]
    except KeyError:
        raise NotRegisteredError(
            f"no {what} named {name!r} is installed; installed: {', '.join(table) or 'none'}"
        ) from None


def _safe_check(platform: PlatformSpec) -> str | None:
    try:
        return platform.check()
    except Exception as exc:  # a platform probe must not take selection down
        return f"its check failed: {type(exc).__name__}: {exc}"


def _explain(reasons: dict[str, str | None], ok: str = "accepts") -> str:
    lines = [f"\n  {name}: {reason or ok}" for name, reason in reasons.items()]
    return "".join(lines) if lines else " (no candidates installed)"
