"""Whole-engine greedy generation of Mistral models (sliding window) against transformers."""

from ferrule_engine.testing import EngineGenerationConformance


class TestMistralGeneration(EngineGenerationConformance):
    """A window of 12 tokens, shorter than most prompts: blocks leave the window and are freed."""

    config_class = "MistralConfig"
    config_overrides = {"sliding_window": 12}
    # Blocks that leave the window are freed, so the pool must be tighter than for
    # full attention to force preemption: one longest request's worth.
    crowded_num_blocks = 1 + (40 + 10) // 4 + 1
