"""ferrule's CUDA plugin: the ``cuda`` platform, ``cuda-gptq-gemv`` and ``torch-int4``.

Importing this package imports no torch; see :mod:`ferrule_cuda_kernels.plugin`.
"""
