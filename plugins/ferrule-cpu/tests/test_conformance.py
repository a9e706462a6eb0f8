"""Both kernels pass the core's conformance kit against the float64 oracle.

On x86 the kit runs bfloat16 and skips float16 / float32 with the kernels' own reason
(torch has no vectorized path for them there); ``test_kernels.py`` checks those dtypes'
numerics by building the kernels directly.
"""

from ferrule_core.testing import KernelConformance


class TestCpuInt4(KernelConformance):
    kernel = "cpu-int4"
    dtypes = ("bfloat16", "float16", "float32")


class TestCpuInt8(KernelConformance):
    kernel = "cpu-int8"
    dtypes = ("bfloat16", "float16", "float32")
