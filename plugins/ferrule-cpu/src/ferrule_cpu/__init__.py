"""ferrule's CPU plugin: the ``cpu`` platform and the ``cpu-int4`` / ``cpu-int8`` linear kernels.

The entry point is :mod:`ferrule_cpu.plugin`; importing this package imports no torch.
"""

__version__ = "0.1.0"
