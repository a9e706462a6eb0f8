"""The ``mistral`` engine models against transformers, with a window shorter than the prompts."""

from ferrule_engine.testing import EngineModelConformance

# every layer slides over 6 positions: the prompts (up to 17 tokens) and chunks exceed it
MISTRAL = {"head_dim": 16, "sliding_window": 6}


class TestMistralEngine(EngineModelConformance):
    architecture = "mistral"
    config_class = "MistralConfig"
    config_overrides = MISTRAL
    expects_sliding_window = True


class TestMistralWithoutWindowEngine(EngineModelConformance):
    architecture = "mistral"
    config_class = "MistralConfig"
    config_overrides = {"head_dim": 16, "sliding_window": None, "num_key_value_heads": 1}


class TestMinistralEngine(EngineModelConformance):
    """Per-layer windows: layer 0 slides, layer 1 sees everything."""

    architecture = "mistral"
    config_class = "MinistralConfig"
    config_overrides = {**MISTRAL, "layer_types": ["sliding_attention", "full_attention"]}
    expects_sliding_window = True
