from __future__ import annotations

import pytest

from ferrule_core import (
    KernelRequest,
    KernelSpec,
    NotRegisteredError,
    PlatformSpec,
    SelectionError,
    hookimpl,
    load_plugins,
)

REQUEST = KernelRequest(platform="cpu", bits=4, group_size=128, dtype="float16")


def _kernel(name, priority=0, **kw):
    return KernelSpec(name=name, kind="linear", factory=lambda layer: None, priority=priority, **kw)


def _registry(kernels=(), platforms=()):
    class Stack:
        @hookimpl
        def ferrule_register_kernels(self):
            return list(kernels)

        @hookimpl
        def ferrule_register_platforms(self):
            return list(platforms)

    return load_plugins(extra=[Stack()], use_entry_points=False)


@pytest.mark.parametrize(
    ("spec_kw", "request_kw", "fragment"),
    [
        ({"platforms": ("cuda",)}, {}, "runs on cuda, not cpu"),
        ({"platforms": ("cpu",), "bits": (4,)}, {"bits": 3}, "supports bits 4, not 3"),
        ({"platforms": ("cpu",), "group_sizes": (64,)}, {}, "group sizes 64, not 128"),
        ({"platforms": ("cpu",), "desc_act": False}, {"desc_act": True}, "act-order"),
        ({"platforms": ("cpu",), "asym": False}, {"sym": False}, "only symmetric"),
        ({"platforms": ("cpu",), "sym": False}, {}, "only asymmetric"),
        ({"platforms": ("cpu",), "dtypes": ("bfloat16",)}, {}, "bfloat16, not float16"),
        (
            {"platforms": ("cpu",), "min_capability": (8, 0)},
            {},
            "8.0 or newer, the device has none",
        ),
        ({"platforms": ("*",), "check": lambda r: "needs K % 1024"}, {}, "needs K % 1024"),
    ],
)
def test_each_capability_refuses_with_a_reason(spec_kw, request_kw, fragment):
    spec = _kernel("k", **spec_kw)
    request = KernelRequest(**{**vars(REQUEST), **request_kw})
    assert fragment in spec.reject_reason(request)


def test_capability_and_wildcard_accept():
    spec = _kernel("k", platforms=("*",), min_capability=(8, 0))
    request = KernelRequest(**{**vars(REQUEST), "platform": "cuda", "capability": (9, 0)})
    assert spec.reject_reason(request) is None


def test_highest_priority_that_accepts_wins():
    registry = _registry(
        [
            _kernel("slow", 0, platforms=("*",)),
            _kernel("fast-but-gpu", 100, platforms=("cuda",)),
            _kernel("fast", 50, platforms=("cpu",)),
        ]
    )
    assert registry.select_kernel("linear", REQUEST).name == "fast"
    reasons = registry.kernel_reasons("linear", REQUEST)
    assert list(reasons) == ["fast-but-gpu", "fast", "slow"]
    assert reasons["fast"] is None and "cuda" in reasons["fast-but-gpu"]


def test_explicit_choice_that_cannot_serve_lists_every_reason():
    registry = _registry(
        [_kernel("gpu", 10, platforms=("cuda",)), _kernel("int8", 5, platforms=("cpu",), bits=(8,))]
    )
    with pytest.raises(SelectionError) as info:
        registry.select_kernel("linear", REQUEST, choice="gpu")
    message = str(info.value)
    assert "'gpu' cannot serve 4-bit group_size=128" in message
    assert "gpu: runs on cuda" in message and "int8: supports bits 8, not 4" in message
    assert set(info.value.reasons) == {"gpu", "int8"}


def test_unknown_choice_and_no_candidate():
    registry = _registry([_kernel("gpu", platforms=("cuda",))])
    with pytest.raises(SelectionError, match="no linear kernel named 'nope'; installed: gpu"):
        registry.select_kernel("linear", REQUEST, choice="nope")
    with pytest.raises(SelectionError, match="no installed linear kernel can serve"):
        registry.select_kernel("linear", REQUEST)
    with pytest.raises(SelectionError, match="no candidates installed"):
        registry.select_kernel("attention", REQUEST)


def _platform(name, priority, reason=None, raises=False):
    def check():
        if raises:
            raise OSError("driver exploded")
        return reason

    return PlatformSpec(
        name=name, device_type=name, check=check, memory=lambda: (1, 1), priority=priority
    )


def test_select_platform_takes_the_best_usable_one():
    registry = _registry(
        platforms=[
            _platform("cpu", 0),
            _platform("cuda", 100, reason="no CUDA device"),
            _platform("weird", 200, raises=True),
        ]
    )
    assert registry.select_platform().name == "cpu"
    reasons = registry.platform_reasons()
    assert reasons["cuda"] == "no CUDA device"
    assert "driver exploded" in reasons["weird"]
    with pytest.raises(SelectionError, match="platform 'cuda' is not usable here") as info:
        registry.select_platform("cuda")
    assert "cuda: no CUDA device" in str(info.value) and "cpu: usable" in str(info.value)
    with pytest.raises(SelectionError, match="no platform named 'tpu'"):
        registry.select_platform("tpu")


def test_no_platform_installed_says_what_to_install():
    with pytest.raises(SelectionError, match=r"ferrule\[cpu\]"):
        _registry().select_platform()


def test_lookup_errors_list_what_is_installed():
    registry = _registry([_kernel("a", platforms=("*",))])
    with pytest.raises(NotRegisteredError, match="no kernel named 'b' is installed; installed: a"):
        registry.kernel("b")
    with pytest.raises(NotRegisteredError, match="installed: none"):
        registry.scheduler("fcfs")


def test_kernel_spec_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="kind='dense' is not a kernel kind"):
        KernelSpec(name="x", kind="dense", factory=lambda layer: None, platforms=("cpu",))
