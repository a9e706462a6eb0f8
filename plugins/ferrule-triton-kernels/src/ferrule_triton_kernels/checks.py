"""Refusals the Triton kernels share: where Triton runs, and whether it is installed.

Each ``check_*`` is a ``KernelSpec.check``: ``None`` when the kernel serves the request, else
a reason a user can act on. They import triton only when called (selection time).

Triton compiles its programs for CUDA and ROCm GPUs. Its interpreter runs the same programs
on CPU tensors through numpy, one program instance at a time: thousands of times slower than
any CPU kernel, and meant for tests. Triton reads ``TRITON_INTERPRET`` when a ``@triton.jit``
function is *defined*, so the variable must be set before the kernel modules are imported.
The kernels therefore list ``cpu`` among their platforms but accept it only while
``TRITON_INTERPRET=1``; without it a CPU layer keeps the CPU kernels.
"""

from __future__ import annotations

import functools
import os

from ferrule_core.specs import KernelRequest

INTERPRET_ENV = "TRITON_INTERPRET"
MIN_TRITON = (3, 0)
# Triton's bfloat16 dots and conversions need Ampere (sm_80) or newer on NVIDIA GPUs.
BF16_CAPABILITY = (8, 0)


def interpreter_enabled() -> bool:
    """Whether Triton runs its programs in the interpreter (on CPU tensors)."""
    return os.environ.get(INTERPRET_ENV) == "1"


@functools.cache
def triton_problem() -> str | None:
    """``None`` when a usable triton imports here, else what is wrong."""
    try:
        import triton
    except Exception as error:  # a broken install raises more than ImportError
        return (
            f"needs triton>={'.'.join(map(str, MIN_TRITON))}, which does not import here "
            f"({type(error).__name__}: {error}); install it with `pip install 'triton>=3.0'`"
        )
    version = tuple(int(part) for part in triton.__version__.split(".")[:2] if part.isdigit())
    if version < MIN_TRITON:
        return (
            f"needs triton>={'.'.join(map(str, MIN_TRITON))}, found triton {triton.__version__}; "
            "upgrade it with `pip install -U 'triton>=3.0'`"
        )
    return None


def check_platform(request: KernelRequest) -> str | None:
    """The refusals every Triton kernel shares (``request.platform`` is already listed)."""
    if request.platform == "cpu" and not interpreter_enabled():
        return (
            "runs on CPU tensors only in Triton's interpreter (TRITON_INTERPRET=1, set before "
            "triton is imported), which is meant for tests and far slower than the CPU kernels"
        )
    if (problem := triton_problem()) is not None:
        return problem
    capability = request.capability
    if (
        request.platform == "cuda"
        and request.dtype == "bfloat16"
        and capability is not None
        and tuple(capability) < BF16_CAPABILITY
    ):
        need = ".".join(map(str, BF16_CAPABILITY))
        have = ".".join(map(str, capability))
        return (
            f"Triton's bfloat16 kernels need compute capability {need} or newer, the device has "
            f"{have}; use float16 activations"
        )
    return None


def check_linear(request: KernelRequest) -> str | None:
    """``triton-gptq``: every bit width, group size and shape ``QuantLinear`` can hold."""
    return check_platform(request)


def check_attention(request: KernelRequest) -> str | None:
    """``triton-paged-attention``: the head dims and dtypes are data on the spec."""
    return check_platform(request)


# transformers' ACT2FN names of SiLU (``swish`` is the same ``nn.SiLU``).
SILU_NAMES = ("silu", "swish")


def check_activation(request: KernelRequest) -> str | None:
    """``triton-silu-mul``: only ``silu(gate) * up``; other activations keep torch's ops."""
    if request.activation not in SILU_NAMES:
        return (
            f"fuses only silu(gate) * up (hidden_act {' or '.join(map(repr, SILU_NAMES))}), "
            f"not hidden_act={request.activation!r}; the MLP computes it with torch ops"
        )
    return check_platform(request)
