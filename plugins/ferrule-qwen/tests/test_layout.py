"""The ``qwen`` layout against tiny random Qwen2 and Qwen3 transformers models."""

import pytest

from ferrule_core.testing import ArchitectureConformance

transformers = pytest.importorskip("transformers")

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=64,
)


class TestQwen2Layout(ArchitectureConformance):
    architecture = "qwen"

    def tiny_config(self):
        return transformers.Qwen2Config(**TINY)


class TestQwen3Layout(ArchitectureConformance):
    architecture = "qwen"

    def tiny_config(self):
        config = getattr(transformers, "Qwen3Config", None)
        if config is None:
            pytest.skip(f"transformers {transformers.__version__} has no qwen3")
        return config(head_dim=16, **TINY)
