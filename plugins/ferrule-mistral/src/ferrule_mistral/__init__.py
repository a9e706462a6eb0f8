"""ferrule's Mistral plugin: the quantization layout of dense Mistral and Ministral models.

The entry point is :mod:`ferrule_mistral.plugin`; importing this package imports no torch.
"""

__version__ = "0.1.0"
