"""Run the Triton kernels in Triton's interpreter, on CPU tensors, where there is no GPU.

Triton chooses between compiling and interpreting when a ``@triton.jit`` function is
*defined*, so ``TRITON_INTERPRET=1`` is set here, before any test module imports the kernel
modules. The kernels accept CPU tensors only while the variable is set, and every package's
tests share one pytest process, so it is set only while collecting and while this
directory's tests run: elsewhere a CPU layer keeps selecting the CPU kernels.
"""

from __future__ import annotations

import os

import pytest
import torch

INTERPRET = not torch.cuda.is_available()
_ENV = "TRITON_INTERPRET"
_USER_VALUE = os.environ.get(_ENV)


def _fix_interpreter_index() -> None:
    """Triton 3.6's interpreter turns a scalar into an int with ``int(array([v]))``, which
    numpy >= 2.4 refuses, so every loop with a runtime bound fails (triton-lang/triton#9171,
    fixed upstream by #9172). Apply the upstream fix: read the one element explicitly."""
    import numpy as np
    from triton.runtime import interpreter

    try:
        int(np.array([1]))
    except TypeError:
        pass
    else:
        return  # numpy < 2.4 converts it
    original = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patch_lang_tensor


if INTERPRET:
    os.environ[_ENV] = "1"
    _fix_interpreter_index()


def pytest_collection_finish(session: pytest.Session) -> None:
    # Every module that defines kernels at import has been imported (interpreted) by now.
    if INTERPRET and _USER_VALUE != "1":
        os.environ.pop(_ENV, None)


@pytest.fixture(autouse=True)
def _triton_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    if INTERPRET:
        monkeypatch.setenv(_ENV, "1")
