"""The ``llama`` engine model against transformers (the kit's checks), for Llama variants."""

from ferrule_engine.testing import EngineModelConformance


class TestLlamaEngine(EngineModelConformance):
    architecture = "llama"
    config_class = "LlamaConfig"


class TestLlamaGqa4To1Engine(EngineModelConformance):
    """Four query heads per KV head, biases everywhere, tied embeddings, llama3 RoPE."""

    architecture = "llama"
    config_class = "LlamaConfig"
    config_overrides = {
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "attention_bias": True,
        "mlp_bias": True,
        "tie_word_embeddings": True,
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    }


class TestLlamaMqaEngine(EngineModelConformance):
    """One KV head, a head dim that is not hidden / heads, linear RoPE scaling."""

    architecture = "llama"
    config_class = "LlamaConfig"
    config_overrides = {
        "num_key_value_heads": 1,
        "head_dim": 32,
        "rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
    }


class TestInternLM3Engine(EngineModelConformance):
    """InternLM3 runs as transformers' LlamaForCausalLM, so it does here."""

    architecture = "llama"
    config_class = "InternLM3Config"
    config_overrides = {"head_dim": 16, "qkv_bias": True, "bias": True}
