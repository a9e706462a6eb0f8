"""Quantization layouts that many Hugging Face decoder families share.

Llama's module names (``model.layers.N.self_attn.q_proj`` ... ``mlp.down_proj``) are used
by Llama, Mistral, Qwen2/3 and others; their plugins build their specs here instead of each
spelling the layout out again (plugins may not import one another).
"""

from __future__ import annotations

from ferrule_core.specs import ArchitectureSpec

LLAMA_LIKE_GROUPS = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)
LLAMA_LIKE_OUTSIDE = ("model.embed_tokens", "model.rotary_emb", "model.norm", "lm_head")


def llama_like(
    name: str,
    model_types: tuple[str, ...],
    *,
    description: str = "",
    engine_model: str | None = None,
) -> ArchitectureSpec:
    """The spec of a family laid out like transformers' ``LlamaForCausalLM``."""
    return ArchitectureSpec(
        name=name,
        model_types=model_types,
        blocks_path="model.layers",
        outside_modules=LLAMA_LIKE_OUTSIDE,
        sequential_groups=LLAMA_LIKE_GROUPS,
        engine_model=engine_model,
        description=description,
    )
