"""ferrule's Llama plugin: the quantization layout of Llama-family models.

The entry point is :mod:`ferrule_llama.plugin`; importing this package imports no torch.
"""

__version__ = "0.1.0"
