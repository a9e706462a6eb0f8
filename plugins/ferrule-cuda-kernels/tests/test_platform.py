"""The ``cuda`` platform record, its refusals on the CPU and its numbers on a GPU."""

import subprocess
import sys

import pytest
import torch

from ferrule_core import load_plugins
from ferrule_cuda_kernels import platform as cuda_platform


def test_the_cuda_platform_record():
    registry = load_plugins()
    spec = registry.platform("cuda")
    assert spec.plugin == "cuda"
    assert (spec.device_type, spec.distributed_backend, spec.priority) == ("cuda", "nccl", 20)
    assert spec.priority > registry.platform("cpu").priority
    assert spec.preferred_kernels == (
        "cuda-gptq-gemv",
        "cuda-gptq-mma",
        "cuda-gptq-wgmma",
        "torch-int4",
    )
    assert all(name in registry.kernels for name in spec.preferred_kernels)
    assert spec.capability is cuda_platform.capability


def _build(monkeypatch, cuda, hip):
    """Pretend torch is a build with these ``cuda``/``hip`` versions, in its version file
    (read without importing torch) and in ``torch.version``."""
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(torch.version, "hip", hip)
    build = {"__version__": torch.__version__, "cuda": cuda, "hip": hip}
    monkeypatch.setattr(cuda_platform, "torch_build", lambda: build)


@pytest.mark.parametrize(
    ("line_cuda", "line_hip", "cuda", "hip"),
    [
        ("cuda: Optional[str] = None", "hip: Optional[str] = None", None, None),
        ("cuda: Optional[str] = '13.0'", "hip: Optional[str] = None", "13.0", None),
        ("cuda = None", 'hip = "6.2.41133"', None, "6.2.41133"),
    ],
)
def test_the_build_is_read_from_torch_version_file(
    tmp_path, monkeypatch, line_cuda, line_hip, cuda, hip
):
    package = tmp_path / "torch"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (package / "version.py").write_text(
        f"from typing import Optional\n__version__ = '9.9.9+x'\n{line_cuda}\n{line_hip}\n"
    )

    class Spec:
        submodule_search_locations = [str(package)]

    monkeypatch.setattr(cuda_platform.importlib.util, "find_spec", lambda name: Spec())
    assert cuda_platform.torch_build() == {"__version__": "9.9.9+x", "cuda": cuda, "hip": hip}
    if cuda is None and hip is None:
        assert "9.9.9+x is built without CUDA" in cuda_platform.check()
    if hip:
        assert "ROCm build (HIP 6.2.41133)" in cuda_platform.check()


def test_a_cpu_build_of_torch_is_refused(monkeypatch):
    _build(monkeypatch, None, None)
    reason = cuda_platform.check()
    assert reason is not None and "without CUDA" in reason and torch.__version__ in reason


def test_a_rocm_build_of_torch_is_refused(monkeypatch):
    _build(monkeypatch, None, "6.2.41133")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    reason = cuda_platform.check()
    assert reason is not None and "ROCm" in reason and "rocm platform" in reason
    assert cuda_platform.capability() is None


def test_a_cuda_torch_without_a_device_is_refused(monkeypatch):
    _build(monkeypatch, "13.0", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = cuda_platform.check()
    assert reason is not None and "no usable CUDA device" in reason and "13.0" in reason
    assert cuda_platform.capability() is None


def test_a_cuda_torch_with_a_device_is_usable(monkeypatch):
    _build(monkeypatch, "13.0", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cuda_platform.check() is None


def test_selection_skips_an_unusable_cuda_platform(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    registry = load_plugins()
    reasons = registry.platform_reasons()
    assert reasons["cuda"] and reasons["cpu"] is None
    assert registry.select_platform().name != "cuda"


@pytest.mark.gpu
def test_memory_and_capability_on_a_gpu():
    spec = load_plugins().platform("cuda")
    assert spec.check() is None
    total, free = spec.memory()
    assert 2**30 < total < 2**42
    assert 0 < free <= total
    assert spec.capability() == tuple(torch.cuda.get_device_capability())


def test_listing_plugins_imports_no_torch():
    code = (
        "import sys, ferrule_core; r = ferrule_core.load_plugins(); "
        "assert 'cuda' in {p.name for p in r.plugins}, r.failures; "
        "print(r.to_dict()['kernels']); "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
