"""ferrule's Falcon plugin: the quantization layout and the engine model of Falcon models.

The entry point is :mod:`ferrule_falcon.plugin`; importing this package imports no torch.
"""

__version__ = "0.1.0"
