"""The ``llama`` layout against a tiny random transformers Llama model."""

from ferrule_core.testing import ArchitectureConformance


class TestLlamaLayout(ArchitectureConformance):
    architecture = "llama"
    config_class = "LlamaConfig"
