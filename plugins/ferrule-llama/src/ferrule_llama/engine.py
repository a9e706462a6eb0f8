"""The serving model of the ``llama`` spec: transformers' ``LlamaForCausalLM`` semantics.

``attention_bias`` puts biases on q, k, v *and* o_proj and ``mlp_bias`` on the MLP, as in
transformers; a ``sliding_window`` in a Llama config is ignored there, so it is here.
InternLM3, which transformers runs as ``LlamaForCausalLM`` (its ``qkv_bias``/``bias`` are
aliases of ``attention_bias``/``mlp_bias``), is served by the same class.
"""

from __future__ import annotations

from ferrule_engine.models import LlamaLikeForCausalLM


class LlamaForCausalLM(LlamaLikeForCausalLM):
    qkv_bias = "attention_bias"
    o_proj_bias = "attention_bias"
    mlp_bias = "mlp_bias"
    qk_norm = False
    sliding_window_mode = "none"
