"""The ``qwen`` engine models (Qwen2 and Qwen3) against transformers."""

from ferrule_engine.testing import EngineModelConformance


class TestQwen2Engine(EngineModelConformance):
    """Biases on q, k and v."""

    architecture = "qwen"
    config_class = "Qwen2Config"


class TestQwen2SlidingEngine(EngineModelConformance):
    """``use_sliding_window`` from layer ``max_window_layers`` on: layer 1 slides, layer 0 not."""

    architecture = "qwen"
    config_class = "Qwen2Config"
    config_overrides = {
        "use_sliding_window": True,
        "sliding_window": 5,
        "max_window_layers": 1,
        "tie_word_embeddings": True,
    }
    expects_sliding_window = True


class TestQwen3Engine(EngineModelConformance):
    """q/k RMS norms over the head dimension, head_dim from the config."""

    architecture = "qwen"
    config_class = "Qwen3Config"
    config_overrides = {"head_dim": 32, "num_key_value_heads": 1}


class TestQwen3BiasEngine(EngineModelConformance):
    architecture = "qwen"
    config_class = "Qwen3Config"
    config_overrides = {"head_dim": 16, "attention_bias": True}
