"""ferrule's Triton kernels: the ``triton-gptq`` linear kernel and ``triton-paged-attention``.

The entry point is :mod:`ferrule_triton_kernels.plugin`; importing this package imports
neither torch nor triton.
"""

__version__ = "0.1.0"
