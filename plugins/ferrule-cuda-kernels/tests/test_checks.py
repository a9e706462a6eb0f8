"""What the two kernels accept and refuse, and the reasons, decided on the CPU."""

import pytest
import torch

from ferrule_core import load_plugins
from ferrule_core.specs import KernelRequest
from ferrule_cuda_kernels import checks, extension
from ferrule_cuda_kernels.groups import group_rows, op_group_size


def request(bits=4, group_size=128, k=4096, n=4096, dtype="float16", capability=(9, 0)):
    return KernelRequest(
        platform="cuda",
        bits=bits,
        group_size=group_size,
        dtype=dtype,
        in_features=k,
        out_features=n,
        capability=capability,
    )


@pytest.fixture(scope="module")
def registry():
    return load_plugins()


@pytest.fixture
def built(monkeypatch):
    """As if the extension were built: only the group and shape rules remain."""
    monkeypatch.setattr(extension, "build_problem", lambda capability: None)


def test_the_kernel_records(registry):
    gemv = registry.kernel("cuda-gptq-gemv")
    assert (gemv.plugin, gemv.priority, gemv.preferred_rows) == ("cuda", 30, (1, 2))
    assert gemv.sorted_groups and gemv.bits == (4, 8) and gemv.platforms == ("cuda",)
    int4 = registry.kernel("torch-int4")
    assert (int4.priority, int4.dtypes, int4.min_capability) == (15, ("bfloat16",), (8, 0))
    assert int4.sorted_groups and int4.bits == (4,)


@pytest.mark.parametrize(
    ("bits", "group_size", "k"),
    [
        (4, 32, 4096),
        (4, 128, 4096),
        (4, -1, 4104),
        (4, 128, 160),
        (4, 96, 4096),
        (8, 16, 256),
        (8, 128, 4096),
        (4, 1024, 512),
        (4, 100, 64),
    ],
)
def test_gemv_accepts_groups_of_whole_units(registry, built, bits, group_size, k):
    spec = registry.kernel("cuda-gptq-gemv")
    assert spec.reject_reason(request(bits, group_size, k)) is None
    assert spec.reject_reason(request(bits, group_size, k, dtype="bfloat16")) is None


@pytest.mark.parametrize(("bits", "group_size", "unit"), [(4, 16, 32), (4, 48, 32), (8, 8, 16)])
def test_gemv_refuses_groups_smaller_than_a_unit(registry, built, bits, group_size, unit):
    reason = registry.kernel("cuda-gptq-gemv").reject_reason(request(bits, group_size, 4096))
    assert reason is not None and f"multiple of {unit}" in reason and str(group_size) in reason


def test_gemv_refusals_from_its_data(registry, built):
    spec = registry.kernel("cuda-gptq-gemv")
    assert "bits 4, 8" in spec.reject_reason(request(bits=3, group_size=128))
    assert "float32" in spec.reject_reason(request(dtype="float32"))
    assert "not cpu" in spec.reject_reason(KernelRequest(platform="cpu", bits=4))


def test_wgmma_shape_rules(registry, built):
    spec = registry.kernel("cuda-gptq-wgmma")
    assert spec.reject_reason(request(k=4096, n=14336)) is None
    assert spec.reject_reason(request(k=4096, n=992, group_size=-1)) is None
    assert "sm_90 devices; this one is sm_100" in spec.reject_reason(request(capability=(10, 0)))
    assert "in_features=4128" in spec.reject_reason(request(k=4128, group_size=-1))
    assert "not 32" in spec.reject_reason(request(group_size=32))
    assert "out_features=1000" in spec.reject_reason(request(n=1000))


def test_gemv_refuses_with_the_build_problem(registry, monkeypatch):
    monkeypatch.setattr(extension, "build_problem", lambda capability: "no nvcc here")
    assert registry.kernel("cuda-gptq-gemv").reject_reason(request()) == "no nvcc here"


def test_gemv_on_a_cpu_torch_says_why(registry):
    if torch.version.cuda is not None:
        pytest.skip("this torch is a CUDA build")
    reason = registry.kernel("cuda-gptq-gemv").reject_reason(request())
    assert reason is not None and "CUDA build of torch" in reason


def test_group_rows():
    assert group_rows(4096, 128) == [128] * 32
    assert group_rows(160, 128) == [128, 32]
    assert group_rows(160, -1) == [160]
    assert group_rows(64, 128) == [64]


@pytest.mark.parametrize(
    ("rows", "size"),
    [
        ([128] * 4, 128),
        ([128, 32], 32),
        ([512, 512], 256),
        ([96], 32),
        ([64, 64, 32], 32),
        ([48], None),
        ([8], None),
        ([256, 16], None),
    ],
)
def test_op_group_size(rows, size):
    assert op_group_size(rows) == size


@pytest.mark.parametrize(
    ("group_size", "k", "accepted"),
    [
        (128, 4096, True),
        (32, 4096, True),
        (-1, 4096, True),
        (128, 160, True),
        (-1, 160, True),
        (64, 4096, True),
        (1024, 4096, True),
        (48, 96, False),
        (-1, 200, False),
        (128, 200, False),
    ],
)
def test_torch_int4_group_layouts(registry, group_size, k, accepted):
    reason = registry.kernel("torch-int4").reject_reason(
        request(group_size=group_size, k=k, dtype="bfloat16")
    )
    if accepted:
        assert reason is None
    else:
        assert reason is not None and "multiple of 32 rows" in reason


def test_torch_int4_refusals_from_its_data(registry):
    spec = registry.kernel("torch-int4")
    assert "bfloat16" in spec.reject_reason(request(dtype="float16"))
    assert "bits 4" in spec.reject_reason(request(bits=8, dtype="bfloat16"))
    old_gpu = request(dtype="bfloat16", capability=(7, 5))
    assert "8.0" in spec.reject_reason(old_gpu)


def test_torch_int4_needs_torch_2_5(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.4.1+cu121")
    reason = checks.check_torch_int4(request(dtype="bfloat16"))
    assert reason is not None and "torch>=2.5" in reason and "2.4.1" in reason
    monkeypatch.setattr(torch, "__version__", "2.11.0+cu130")
    assert checks.check_torch_int4(request(dtype="bfloat16")) is None


def test_torch_version_parsing():
    assert checks._torch_version("2.11.0+cu130") == (2, 11)
    assert checks._torch_version("2.5.0a0+git1234") == (2, 5)
    assert checks._torch_version("weird") == (0, 0)


def test_rows_each_kernel_serves_on_an_h100(registry, built):
    """With every plugin installed: gemv 1-2 rows, then wgmma from 3 rows on every layer
    (cuda-gptq-mma and triton-gptq serve only where wgmma cannot: before sm_90)."""
    pytest.importorskip("ferrule_triton_kernels")

    def plan(k, n):
        chosen = registry.select_kernels_by_rows("linear", request(k=k, n=n))
        return [(low, high, spec.name) for low, high, spec in chosen]

    for k, n in ((4096, 14336), (28672, 8192), (14336, 4096), (4096, 4096), (4096, 1024)):
        assert plan(k, n) == [(1, 2, "cuda-gptq-gemv"), (3, None, "cuda-gptq-wgmma")]
