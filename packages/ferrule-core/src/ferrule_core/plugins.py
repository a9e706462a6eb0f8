"""Plugin discovery and loading.

Plugins are modules named in the ``ferrule`` entry-point group. ``load_plugins()``
imports each one, registers it with a pluggy ``PluginManager``, checks that every hook
implementation matches a specification, calls each registration hook once per plugin,
and returns a :class:`Registry` of plain records.

Environment:
``FERRULE_LOAD_PLUGINS=a,b``  load only these entry points (by entry-point or
    distribution name); the core's own built-ins always load.
``FERRULE_TRACE_PLUGINS=1``   report every plugin import and hook call on stderr.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import logging
import os
import sys
import time
from collections.abc import Iterable
from importlib import metadata
from typing import Any

import pluggy

from ferrule_core import hookspecs
from ferrule_core.errors import PluginError
from ferrule_core.registry import PluginFailure, PluginInfo, Registry

ENTRY_POINT_GROUP = "ferrule"
CORE_PLUGIN = "core"
LOAD_ENV = "FERRULE_LOAD_PLUGINS"
TRACE_ENV = "FERRULE_TRACE_PLUGINS"

hookimpl = pluggy.HookimplMarker("ferrule")
logger = logging.getLogger("ferrule.plugins")

_FAMILY_TABLES = {
    "ferrule_register_architectures": "architectures",
    "ferrule_register_kernels": "kernels",
    "ferrule_register_quant_methods": "quant_methods",
    "ferrule_register_schedulers": "schedulers",
    "ferrule_register_platforms": "platforms",
}


def load_plugins(
    *,
    allow: Iterable[str] | None = None,
    extra: Iterable[Any] = (),
    use_entry_points: bool = True,
) -> Registry:
    """Load the installed plugins (and ``extra`` plugin objects) into a new registry.

    ``allow`` restricts the entry points loaded, like ``FERRULE_LOAD_PLUGINS``, which it
    overrides. ``extra`` are modules or objects holding ``@hookimpl`` functions, for a
    stack composed in Python. A plugin that fails to import, or whose hook raises, is
    skipped with a warning naming it and recorded in ``registry.failures``.
    """
    trace = _Tracer(os.environ.get(TRACE_ENV, "") not in ("", "0", "false"))
    allowed = _allow_list(allow)
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    registry = Registry()

    if use_entry_points:
        for ep in _entry_points():
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            if allowed is not None and ep.name != CORE_PLUGIN and not ({ep.name, dist} & allowed):
                trace.write(f"skipped plugin {ep.name} ({LOAD_ENV} does not name it)")
                continue
            start = time.perf_counter()
            try:
                module = ep.load()
                pm.register(module, name=ep.name)
            except Exception as exc:
                _record_failure(registry, ep.name, dist, f"failed to load: {_describe(exc)}")
                continue
            trace.write(f"loaded plugin {ep.name} ({ep.value}, {dist} {version})", start)
            registry.plugins.append(PluginInfo(ep.name, ep.value, dist, version))

    for obj in extra:
        name = getattr(obj, "__name__", None) or type(obj).__name__
        pm.register(obj, name=name)
        registry.plugins.append(PluginInfo(name, name))
        trace.write(f"registered plugin object {name}")

    _check_pending(pm, registry)
    failed = {f.name for f in registry.failures}
    for hook_name, table_name in _FAMILY_TABLES.items():
        table = getattr(registry, table_name)
        record_type = hookspecs.FAMILIES[hook_name]
        for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls()):
            if impl.plugin_name in failed:
                continue
            start = time.perf_counter()
            try:
                records = _as_list(impl.function(), record_type, impl.plugin_name, hook_name)
            except Exception as exc:
                _record_failure(registry, impl.plugin_name, None, f"{hook_name}: {_describe(exc)}")
                failed.add(impl.plugin_name)
                continue
            names = ", ".join(r.name for r in records) or "nothing"
            trace.write(f"{impl.plugin_name}.{hook_name}() -> {names}", start)
            for record in records:
                _add(table, dataclasses.replace(record, plugin=impl.plugin_name), table_name)
    if failed:
        registry.plugins[:] = [p for p in registry.plugins if p.name not in failed]
    _check_model_types(registry)
    return registry


@functools.lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry of the installed plugins, loaded once per process."""
    return load_plugins()


def _entry_points() -> list[metadata.EntryPoint]:
    seen: set[tuple[str, str]] = set()
    found = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if (ep.name, ep.value) not in seen:  # one distribution visible on two paths
            seen.add((ep.name, ep.value))
            found.append(ep)
    return sorted(found, key=lambda ep: (ep.name != CORE_PLUGIN, ep.name))


def _allow_list(allow: Iterable[str] | None) -> set[str | None] | None:
    if allow is None:
        raw = os.environ.get(LOAD_ENV)
        if raw is None:
            return None
        allow = raw.split(",")
    return {name.strip() for name in allow if name.strip()}


def _record_failure(registry: Registry, name: str, dist: str | None, error: str) -> None:
    where = f" (from {dist})" if dist else ""
    logger.warning("ferrule plugin %r%s is skipped: %s", name, where, error)
    registry.failures.append(PluginFailure(name, dist, error))


def _check_pending(pm: pluggy.PluginManager, registry: Registry) -> None:
    """Drop plugins with a ``@hookimpl`` that is no ferrule hook (usually a typo).

    Each is reported like any broken plugin; then pluggy's own ``check_pending`` must pass.
    """
    known = list(_FAMILY_TABLES)
    for name in sorted(vars(pm.hook)):
        caller = getattr(pm.hook, name)
        if caller.spec is not None:
            continue
        for impl in caller.get_hookimpls():
            if impl.optionalhook or pm.get_plugin(impl.plugin_name) is None:
                continue
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]}?" if close else f"the hooks are {', '.join(known)}"
            dist = next(
                (p.distribution for p in registry.plugins if p.name == impl.plugin_name), None
            )
            _record_failure(
                registry,
                impl.plugin_name,
                dist,
                f"implements {name!r}, which is not a ferrule hook; {hint}",
            )
            pm.unregister(name=impl.plugin_name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc)) from exc


def _as_list(result: Any, record_type: type, plugin: str, hook_name: str) -> list[Any]:
    if result is None:
        return []
    records = list(result) if isinstance(result, list | tuple) else [result]
    for record in records:
        if not isinstance(record, record_type):
            raise PluginError(
                f"{hook_name} must return {record_type.__name__} records, "
                f"plugin {plugin!r} returned {type(record).__name__}"
            )
    return records


def _add(table: dict[str, Any], record: Any, what: str) -> None:
    existing = table.get(record.name)
    if existing is not None:
        raise PluginError(
            f"two plugins register {what} named {record.name!r}: {existing.plugin!r} and "
            f"{record.plugin!r}; uninstall one, or restrict loading with {LOAD_ENV}"
        )
    table[record.name] = record


def _check_model_types(registry: Registry) -> None:
    owner: dict[str, Any] = {}
    for spec in registry.architectures.values():
        for model_type in spec.model_types:
            if model_type in owner:
                other = owner[model_type]
                raise PluginError(
                    f"model_type {model_type!r} is claimed twice: by architecture "
                    f"{other.name!r} of plugin {other.plugin!r} and by {spec.name!r} of "
                    f"plugin {spec.plugin!r}"
                )
            owner[model_type] = spec


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _Tracer:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def write(self, message: str, start: float | None = None) -> None:
        if not self.enabled:
            return
        took = f" [{(time.perf_counter() - start) * 1e3:.1f} ms]" if start is not None else ""
        sys.stderr.write(f"ferrule-trace: {message}{took}\n")
