"""The serving models of the ``mistral`` spec.

``MistralForCausalLM``: no biases; every layer attends within ``config.sliding_window``
(when set), as transformers' ``MistralModel`` does whatever ``layer_types`` says.
``MinistralForCausalLM``: the same modules, but a layer slides only when its
``layer_types`` entry is ``sliding_attention``. ``MistralFamilyForCausalLM`` is what the
spec names: it picks one of the two by ``config.model_type``.
"""

from __future__ import annotations

from ferrule_engine.models import LlamaLikeForCausalLM, ModelTypeDispatch


class MistralForCausalLM(LlamaLikeForCausalLM):
    qkv_bias = False
    o_proj_bias = False
    mlp_bias = False
    qk_norm = False
    sliding_window_mode = "all"


class MinistralForCausalLM(MistralForCausalLM):
    sliding_window_mode = "layer_types"


class MistralFamilyForCausalLM(ModelTypeDispatch):
    models = {"mistral": MistralForCausalLM, "ministral": MinistralForCausalLM}
