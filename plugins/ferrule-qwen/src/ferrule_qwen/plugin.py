"""The ``qwen`` entry point: the layout of dense Qwen2 and Qwen3 models.

Importing this module imports no torch or transformers.

One spec covers both types because their quantization layouts are identical: the same
blocks, outside modules and linear layers in the same order. What differs is not a
layout: Qwen2 has biases on q/k/v, and Qwen3 drops them and adds ``self_attn.q_norm`` and
``self_attn.k_norm``, RMS norms over the head dimension that GPTQ leaves in full precision.
Qwen2-MoE and Qwen3-MoE belong to the MoE plugin, the vision-language Qwen models to the
multimodal one.
"""

from __future__ import annotations

from ferrule_core import hookimpl
from ferrule_core.layouts import llama_like

QWEN = llama_like(
    "qwen",
    ("qwen2", "qwen3"),
    description="Qwen1.5 / Qwen2 / Qwen2.5 and Qwen3 families (dense)",
    engine_model="ferrule_qwen.engine:QwenForCausalLM",
)


@hookimpl
def ferrule_register_architectures():
    return [QWEN]
