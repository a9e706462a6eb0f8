"""Whole-engine greedy generation of Llama models against transformers generate."""

from ferrule_engine.testing import EngineGenerationConformance


class TestLlamaGeneration(EngineGenerationConformance):
    config_class = "LlamaConfig"
