"""The core's own plugin: registered through the ``ferrule`` entry point like any other.

It provides the reference linear kernel as the default of last resort (``trylast`` and
the lowest priority), so a ``QuantLinear`` works on any device torch supports.
"""

from __future__ import annotations

from ferrule_core.plugins import hookimpl
from ferrule_core.specs import ANY_PLATFORM, KernelSpec

REFERENCE_PRIORITY = -1000


def _reference_factory(layer):
    from ferrule_core.kernels.reference import ReferenceLinearKernel

    return ReferenceLinearKernel(layer)


@hookimpl(trylast=True)
def ferrule_register_kernels():
    return [
        KernelSpec(
            name="reference",
            kind="linear",
            factory=_reference_factory,
            platforms=(ANY_PLATFORM,),
            bits=(2, 3, 4, 8),
            group_sizes=None,
            desc_act=True,
            dtypes=("float16", "bfloat16", "float32", "float64"),
            priority=REFERENCE_PRIORITY,
            description="pure torch: dequantize to float, then matmul (any device)",
        )
    ]
