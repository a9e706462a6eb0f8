"""The ``cpu`` platform record and its memory numbers."""

import subprocess
import sys

from ferrule_core import load_plugins
from ferrule_cpu import platform as cpu_platform


def test_the_cpu_platform_record():
    registry = load_plugins()
    spec = registry.platform("cpu")
    assert spec.plugin == "cpu"
    assert (spec.device_type, spec.distributed_backend, spec.priority) == ("cpu", "gloo", 0)
    assert spec.preferred_kernels == ("cpu-int4", "cpu-int8")
    assert all(name in registry.kernels for name in spec.preferred_kernels)
    assert spec.check() is None
    assert registry.select_platform("cpu") is spec


def test_memory_is_plausible():
    total, available = load_plugins().platform("cpu").memory()
    assert 64 * 2**20 < total < 2**50
    assert 0 < available <= total


def test_meminfo_is_parsed_in_bytes(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(
        "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    600 kB\n"
    )
    assert cpu_platform._meminfo(meminfo) == (1000 * 1024, 600 * 1024)
    old = tmp_path / "old"  # kernels before 3.14 have no MemAvailable
    old.write_text("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 10 kB\nCached: 200 kB\n")
    assert cpu_platform._meminfo(old) == (1000 * 1024, 310 * 1024)
    assert cpu_platform._meminfo(tmp_path / "missing") is None


def test_a_cgroup_limit_caps_host_memory(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 8000000 kB\nMemAvailable: 6000000 kB\n")
    limit, usage = tmp_path / "memory.max", tmp_path / "memory.current"
    limit.write_text(f"{2 * 2**30}\n")
    usage.write_text(f"{2**29}\n")
    monkeypatch.setattr(cpu_platform, "MEMINFO", meminfo)
    monkeypatch.setattr(cpu_platform, "CGROUP_FILES", ((limit, usage),))
    assert cpu_platform.memory() == (2 * 2**30, 2 * 2**30 - 2**29)
    limit.write_text("max\n")  # cgroup v2 without a limit
    assert cpu_platform.memory() == (8000000 * 1024, 6000000 * 1024)


def test_sysconf_is_the_fallback_without_proc(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_platform, "MEMINFO", tmp_path / "missing")
    monkeypatch.setattr(cpu_platform, "CGROUP_FILES", ())
    total, available = cpu_platform.memory()
    assert total > 0 and 0 < available <= total


def test_listing_plugins_imports_no_torch():
    code = (
        "import sys, ferrule_core; r = ferrule_core.load_plugins(); "
        "assert 'cpu' in {p.name for p in r.plugins}, r.failures; "
        "r.platform('cpu').memory(); print(r.to_dict()['kernels']); "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
