"""Building the extension: where it goes, when it refuses, and that the kernel source compiles."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

from ferrule_cuda_kernels import extension


@pytest.fixture
def fresh_build_cache():
    extension._build.cache_clear()
    yield
    extension._build.cache_clear()


@pytest.fixture
def cuda_torch(monkeypatch, tmp_path):
    """A CUDA torch with an nvcc and ninja, as far as the toolchain probe can tell."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.version, "hip", None)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvcc").write_text("")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(tmp_path))
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: True)
    return tmp_path


def test_the_cache_root(tmp_path):
    assert extension.cache_root({"TORCH_EXTENSIONS_DIR": "/x/ext"}) == Path("/x/ext")
    assert extension.cache_root({"XDG_CACHE_HOME": "/c"}) == Path("/c/ferrule/torch_extensions")
    assert extension.cache_root({}, home=tmp_path) == tmp_path / ".cache/ferrule/torch_extensions"
    both = {"TORCH_EXTENSIONS_DIR": "/x/ext", "XDG_CACHE_HOME": "/c"}
    assert extension.cache_root(both) == Path("/x/ext")


def test_the_build_folder_names_everything_that_changes_the_binary():
    tag = extension.build_tag((3, 11), "2.11.0+cu130", "13.0", (9, 0), "abc123")
    assert tag == "py311_torch2.11.0-cu130_cuda13.0_sm90_abc123"
    others = [
        extension.build_tag((3, 12), "2.11.0+cu130", "13.0", (9, 0), "abc123"),
        extension.build_tag((3, 11), "2.10.0+cu128", "12.8", (9, 0), "abc123"),
        extension.build_tag((3, 11), "2.11.0+cu130", "13.0", (8, 0), "abc123"),
        extension.build_tag((3, 11), "2.11.0+cu130", "13.0", (9, 0), "def456"),
    ]
    assert len({tag, *others}) == 5
    assert "/" not in extension.build_tag((3, 11), "2.11/x", None, (9, 0), "h")


def test_the_build_folder_is_under_the_cache_root(tmp_path):
    folder = extension.build_directory((9, 0), root=tmp_path)
    assert folder.parent.parent == tmp_path and folder.name == extension.NAME
    assert "_sm90_" in folder.parent.name and torch.__version__.split("+")[0] in folder.parent.name


def test_a_changed_source_gets_a_new_hash(tmp_path):
    copy = tmp_path / "csrc"
    shutil.copytree(extension.CSRC, copy)
    before = extension.source_hash(copy)
    assert before == extension.source_hash(extension.CSRC)
    header = copy / "gptq_gemv.h"
    header.write_text(header.read_text() + "\n// changed\n")
    assert extension.source_hash(copy) != before


def test_arch_flags_name_one_architecture():
    assert extension.arch_flags((9, 0)) == ["-gencode=arch=compute_90a,code=sm_90a"]
    assert extension.arch_flags((8, 6)) == ["-gencode=arch=compute_86,code=sm_86"]


def test_a_cpu_torch_cannot_build(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    reason = extension.toolchain_problem()
    assert reason is not None and "CUDA build of torch" in reason


def test_no_nvcc_is_a_reason(cuda_torch, monkeypatch):
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    reason = extension.toolchain_problem()
    assert reason is not None and "nvcc" in reason and "CUDA_HOME" in reason
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(cuda_torch / "missing"))
    assert "nvcc" in extension.toolchain_problem()


def test_no_ninja_is_a_reason(cuda_torch, monkeypatch):
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: False)
    reason = extension.toolchain_problem()
    assert reason is not None and "pip install ninja" in reason


def test_a_complete_toolchain_is_no_problem(cuda_torch):
    assert extension.toolchain_problem() is None


def test_a_failed_build_is_remembered_as_the_reason(
    cuda_torch, monkeypatch, tmp_path, fresh_build_cache
):
    calls = []

    def failing_load(**kwargs):
        calls.append(kwargs)
        raise RuntimeError(
            "Error building extension 'ferrule_cuda_gptq_gemv': [1/3] nvcc ...\n"
            'gptq_gemv.cu(12): error: expected a ";"\n'
            "ninja: build stopped: subcommand failed."
        )

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.setattr(cpp_extension, "load", failing_load)
    reason = extension.build_problem((9, 0))
    assert reason is not None and 'expected a ";"' in reason
    assert extension.build_problem((9, 0)) == reason
    assert len(calls) == 1, "a failed build is not retried in the same process"
    with pytest.raises(RuntimeError, match="building its CUDA extension failed"):
        extension.load((9, 0))
    (kwargs,) = calls
    assert kwargs["name"] == extension.NAME
    assert "-gencode=arch=compute_90a,code=sm_90a" in kwargs["extra_cuda_cflags"]
    assert "-ftz=false" in kwargs["extra_cuda_cflags"]
    assert Path(kwargs["build_directory"]).is_dir()
    assert Path(kwargs["build_directory"]).is_relative_to(tmp_path / "ext")
    assert [Path(s).name for s in kwargs["sources"]] == list(extension.SOURCES)


def test_a_successful_build_is_loaded_once(cuda_torch, monkeypatch, tmp_path, fresh_build_cache):
    module = object()
    calls = []
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: calls.append(kwargs) or module)
    assert extension.build_problem((9, 0)) is None
    assert extension.load((9, 0)) is module
    assert len(calls) == 1


def test_build_errors_are_summarized():
    log = "\n".join(
        ["[1/3] c++ -O3 ...", "a.cu(3): error: identifier x is undefined", "warning: w"]
        + [f"b.cu({i}): error: e{i}" for i in range(10)]
    )
    summary = extension.summarize_build_error(log)
    assert summary.startswith("a.cu(3): error: identifier x is undefined")
    assert "e4" in summary and "e5" not in summary and "warning" not in summary
    assert extension.summarize_build_error("x" * 5000, limit=100).endswith("...")
    assert extension.summarize_build_error("no such file\nlinker said no") == (
        "no such file | linker said no"
    )


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
@pytest.mark.parametrize(
    ("source", "arch"),
    [
        ("gptq_gemv.cu", "80"),
        ("gptq_mma.cu", "80"),
        ("gptq_wgmma.cu", "80"),  # compiles to a trap before sm_90a
        ("gptq_wgmma.cu", "90a"),
    ],
)
def test_the_kernel_sources_compile(tmp_path, source, arch):
    """The .cu files include no torch header, so nvcc alone can check them, without warnings
    (ptxas reports wgmma it had to serialize as a warning)."""
    done = subprocess.run(
        [
            "nvcc",
            "-std=c++17",
            "-O3",
            "-ftz=false",
            f"-gencode=arch=compute_{arch},code=sm_{arch}",
            "-c",
            str(extension.CSRC / source),
            "-o",
            str(tmp_path / "kernel.o"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr.lower(), done.stderr
