"""The ``mistral`` layout against tiny random transformers models of each claimed type."""

import pytest

from ferrule_core.testing import ArchitectureConformance

transformers = pytest.importorskip("transformers")

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=128,
    max_position_embeddings=64,
    sliding_window=4,  # shorter than the 8-token sample, so the window is in play
)


class TestMistralLayout(ArchitectureConformance):
    architecture = "mistral"

    def tiny_config(self):
        return transformers.MistralConfig(**TINY)


class TestMinistralLayout(ArchitectureConformance):
    architecture = "mistral"

    def tiny_config(self):
        config = getattr(transformers, "MinistralConfig", None)
        if config is None:
            pytest.skip(f"transformers {transformers.__version__} has no ministral")
        return config(layer_types=["sliding_attention", "full_attention"], **TINY)
