"""The ``falcon`` layout against tiny random transformers models of each Falcon variant."""

from ferrule_core.testing import ArchitectureConformance


class TestFalcon7BLayout(ArchitectureConformance):
    """Parallel attention and MLP off one norm, a single shared KV head."""

    architecture = "falcon"
    config_class = "FalconConfig"
    config_overrides = {
        "parallel_attn": True,
        "multi_query": True,
        "new_decoder_architecture": False,
    }


class TestFalcon40BLayout(ArchitectureConformance):
    """New decoder architecture (40B, 180B): grouped KV heads, ln_attn and ln_mlp."""

    architecture = "falcon"
    config_class = "FalconConfig"
    config_overrides = {"parallel_attn": True, "new_decoder_architecture": True, "num_kv_heads": 2}


class TestFalcon2Layout(ArchitectureConformance):
    """Falcon2-11B: new decoder architecture with one norm for attention and MLP."""

    architecture = "falcon"
    config_class = "FalconConfig"
    config_overrides = {
        "parallel_attn": True,
        "new_decoder_architecture": True,
        "num_kv_heads": 2,
        "num_ln_in_parallel_attn": 1,
    }


class TestFalconRWLayout(ArchitectureConformance):
    """Falcon-RW: attention then MLP in sequence, ALiBi, biases."""

    architecture = "falcon"
    config_class = "FalconConfig"
    config_overrides = {
        "parallel_attn": False,
        "multi_query": False,
        "new_decoder_architecture": False,
        "alibi": True,
        "bias": True,
    }
