"""Whole-engine greedy generation of Qwen2 and Qwen3 models against transformers generate."""

from ferrule_engine.testing import EngineGenerationConformance


class TestQwen2Generation(EngineGenerationConformance):
    config_class = "Qwen2Config"


class TestQwen3Generation(EngineGenerationConformance):
    config_class = "Qwen3Config"
    config_overrides = {"head_dim": 32}
