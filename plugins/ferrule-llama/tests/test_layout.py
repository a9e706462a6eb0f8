"""The ``llama`` layout against tiny random transformers models of each claimed type."""

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


class TestLlamaLayout(ArchitectureConformance):
    architecture = "llama"

    def tiny_config(self):
        return transformers.LlamaConfig(**TINY)


class TestInternLM3Layout(ArchitectureConformance):
    architecture = "llama"

    def tiny_config(self):
        config = getattr(transformers, "InternLM3Config", None)
        if config is None:
            pytest.skip(f"transformers {transformers.__version__} has no native internlm3")
        return config(head_dim=16, **TINY)
