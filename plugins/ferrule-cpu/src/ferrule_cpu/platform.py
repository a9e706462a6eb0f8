"""The CPU platform: always usable, its memory read from the operating system without torch.

``memory()`` returns ``(total, available)`` bytes of host memory. On Linux it reads
``/proc/meminfo`` (``MemTotal``, ``MemAvailable``) and lowers both to the memory cgroup's
limit when the process runs under one (a container), since that limit, not the host's RAM,
is what the kernel enforces. Elsewhere it asks ``os.sysconf``; where the system reports no
available memory (macOS) available equals total, and where it reports nothing (Windows)
both are 0, meaning unknown.
"""

from __future__ import annotations

import os
from pathlib import Path

MEMINFO = Path("/proc/meminfo")
NO_LIMIT = 1 << 60
# (limit file, usage file) of cgroup v2, then v1, as mounted inside the process's namespace.
CGROUP_FILES = (
    (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")),
    (
        Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
        Path("/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ),
)


def always_usable() -> str | None:
    """The CPU platform's ``check``: there is always a CPU."""
    return None


def memory() -> tuple[int, int]:
    """``(total, available)`` bytes of host memory, capped by a cgroup limit if one applies."""
    host = _meminfo(MEMINFO) or _sysconf()
    limit = _cgroup_limit()
    if host is None:
        return (limit[0], max(limit[0] - limit[1], 0)) if limit else (0, 0)
    total, available = host
    if limit is not None and limit[0] < total:
        cap, used = limit
        return cap, min(available, max(cap - used, 0))
    return total, available


def _meminfo(path: Path) -> tuple[int, int] | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    fields = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            scale = 1024 if parts[1:2] == ["kB"] else 1
            fields[key.strip()] = int(parts[0]) * scale
    if "MemTotal" not in fields:
        return None
    available = fields.get("MemAvailable")
    if available is None:  # kernels before 3.14
        available = sum(fields.get(k, 0) for k in ("MemFree", "Buffers", "Cached"))
    return fields["MemTotal"], available


def _sysconf() -> tuple[int, int] | None:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page
    except (AttributeError, OSError, ValueError):  # no sysconf (Windows) or no such name
        return None
    if total <= 0:
        return None
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * page
    except (OSError, ValueError):  # macOS has no SC_AVPHYS_PAGES
        available = total
    return total, available


def _cgroup_limit() -> tuple[int, int] | None:
    """``(limit, usage)`` bytes of the process's memory cgroup, or ``None`` without a limit."""
    for limit_file, usage_file in CGROUP_FILES:
        try:
            raw = limit_file.read_text().strip()
        except OSError:
            continue
        if not raw.isdigit() or int(raw) >= NO_LIMIT:  # v2 writes "max", v1 a huge number
            return None
        try:
            used = int(usage_file.read_text().strip())
        except (OSError, ValueError):
            used = 0
        return int(raw), used
    return None
