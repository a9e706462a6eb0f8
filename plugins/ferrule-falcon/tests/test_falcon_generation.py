"""Whole-engine greedy generation of Falcon models (both decoder layouts) against transformers."""

from ferrule_engine.testing import EngineGenerationConformance


class TestFalcon7bStyleGeneration(EngineGenerationConformance):
    """Old decoder layout: parallel attention, multi-query."""

    config_class = "FalconConfig"
    config_overrides = {
        "new_decoder_architecture": False,
        "multi_query": True,
        "parallel_attn": True,
        "alibi": False,
        "bias": False,
    }


class TestFalcon40bStyleGeneration(EngineGenerationConformance):
    """New decoder layout: grouped KV heads, two layer norms."""

    config_class = "FalconConfig"
    config_overrides = {
        "new_decoder_architecture": True,
        "num_kv_heads": 2,
        "alibi": False,
        "bias": False,
    }
