"""The conformance kit: base test classes a plugin's tests subclass in a few lines.

Importing it needs pytest and torch (it is for test suites, not for library code).
"""

from ferrule_core.testing.architectures import ArchitectureConformance, layout_problems
from ferrule_core.testing.distributions import write_plugin_distribution
from ferrule_core.testing.kernels import (
    KernelConformance,
    float64_reference,
    random_gptq_tensors,
    relative_error,
)
from ferrule_core.testing.oracle import float64_oracle, max_relative_error
from ferrule_core.testing.tiny_models import (
    TINY_SIZES,
    tiny_config,
    train_tokenizer,
    write_tiny_model,
)

__all__ = [
    "TINY_SIZES",
    "ArchitectureConformance",
    "KernelConformance",
    "float64_oracle",
    "float64_reference",
    "layout_problems",
    "max_relative_error",
    "random_gptq_tensors",
    "relative_error",
    "tiny_config",
    "train_tokenizer",
    "write_plugin_distribution",
    "write_tiny_model",
]
