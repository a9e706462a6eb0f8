"""The reference kernel passes the conformance kit it anchors."""

from ferrule_core.testing import KernelConformance


class TestReferenceKernel(KernelConformance):
    kernel = "reference"
    dtypes = ("float32", "float64", "bfloat16")
