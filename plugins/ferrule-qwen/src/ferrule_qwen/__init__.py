"""ferrule's Qwen plugin: the quantization layout of dense Qwen2 and Qwen3 models.

The entry point is :mod:`ferrule_qwen.plugin`; importing this package imports no torch.
"""

__version__ = "0.1.0"
