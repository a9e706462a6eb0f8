"""The ``mistral`` layout against tiny random transformers models of each claimed type."""

from ferrule_core.testing import ArchitectureConformance

# a window shorter than the kit's 8-token sample, so that sliding attention is in play
MISTRAL = {"head_dim": 16, "sliding_window": 4}


class TestMistralLayout(ArchitectureConformance):
    architecture = "mistral"
    config_class = "MistralConfig"
    config_overrides = MISTRAL


class TestMinistralLayout(ArchitectureConformance):
    architecture = "mistral"
    config_class = "MinistralConfig"
    config_overrides = {**MISTRAL, "layer_types": ["sliding_attention", "full_attention"]}
