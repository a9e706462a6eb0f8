"""The ``falcon`` layout against tiny random transformers models of each Falcon variant."""

import pytest

from ferrule_core.testing import ArchitectureConformance

transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=128)


class TestFalcon7BLayout(ArchitectureConformance):
    """Parallel attention and MLP off one norm, a single shared KV head."""

    architecture = "falcon"

    def tiny_config(self):
        return transformers.FalconConfig(
            parallel_attn=True, multi_query=True, new_decoder_architecture=False, **TINY
        )


class TestFalcon40BLayout(ArchitectureConformance):
    """New decoder architecture (40B, 180B): grouped KV heads, ln_attn and ln_mlp."""

    architecture = "falcon"

    def tiny_config(self):
        return transformers.FalconConfig(
            parallel_attn=True, new_decoder_architecture=True, num_kv_heads=2, **TINY
        )


class TestFalcon2Layout(ArchitectureConformance):
    """Falcon2-11B: new decoder architecture with one norm for attention and MLP."""

    architecture = "falcon"

    def tiny_config(self):
        return transformers.FalconConfig(
            parallel_attn=True,
            new_decoder_architecture=True,
            num_kv_heads=2,
            num_ln_in_parallel_attn=1,
            **TINY,
        )


class TestFalconRWLayout(ArchitectureConformance):
    """Falcon-RW: attention then MLP in sequence, ALiBi, biases."""

    architecture = "falcon"

    def tiny_config(self):
        return transformers.FalconConfig(
            parallel_attn=False,
            multi_query=False,
            new_decoder_architecture=False,
            alibi=True,
            bias=True,
            **TINY,
        )
