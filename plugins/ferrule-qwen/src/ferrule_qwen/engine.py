"""The serving models of the ``qwen`` spec (dense Qwen2 and Qwen3).

``Qwen2ForCausalLM``: biases on q, k and v (not on o_proj or the MLP).
``Qwen3ForCausalLM``: ``attention_bias`` on all four projections (off in released models)
and RMS norms ``q_norm``/``k_norm`` over the head dimension before RoPE; ``head_dim`` comes
from the config. Both slide per layer as transformers does: with ``use_sliding_window``,
the layers from ``max_window_layers`` on (``config.layer_types``) attend within
``sliding_window``, the others see everything. ``QwenForCausalLM`` is what the spec names:
it picks one of the two by ``config.model_type``.
"""

from __future__ import annotations

from ferrule_engine.models import LlamaLikeForCausalLM, ModelTypeDispatch


class Qwen2ForCausalLM(LlamaLikeForCausalLM):
    qkv_bias = True
    o_proj_bias = False
    mlp_bias = False
    qk_norm = False
    sliding_window_mode = "layer_types"


class Qwen3ForCausalLM(LlamaLikeForCausalLM):
    qkv_bias = "attention_bias"
    o_proj_bias = "attention_bias"
    mlp_bias = False
    qk_norm = True
    sliding_window_mode = "layer_types"


class QwenForCausalLM(ModelTypeDispatch):
    models = {"qwen2": Qwen2ForCausalLM, "qwen3": Qwen3ForCausalLM}
