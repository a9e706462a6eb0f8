"""The ``qwen`` layout against tiny random transformers Qwen2 and Qwen3 models."""

from ferrule_core.testing import ArchitectureConformance


class TestQwen2Layout(ArchitectureConformance):
    architecture = "qwen"
    config_class = "Qwen2Config"


class TestQwen3Layout(ArchitectureConformance):
    architecture = "qwen"
    config_class = "Qwen3Config"
    config_overrides = {"head_dim": 16}
