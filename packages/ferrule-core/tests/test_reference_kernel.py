"""The reference kernel passes the conformance kit it anchors."""

import pytest

from ferrule_core.testing import KernelConformance


class TestReferenceKernel(KernelConformance):
    kernel = "reference"
    dtypes = ("float32", "float64", "bfloat16")


@pytest.mark.gpu
class TestReferenceKernelOnCuda(KernelConformance):
    kernel = "reference"
    device = "cuda"
    dtypes = ("float16", "bfloat16", "float32")
