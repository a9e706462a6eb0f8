"""The ``mistral`` entry point: the layout of dense Mistral models.

Importing this module imports no torch or transformers.

``ministral`` is claimed too: transformers' ``AutoConfig`` turns a ``mistral`` config that
has ``layer_types`` (per-layer sliding or full attention, the Ministral-8B-Instruct-2410
layout) into a ``ministral`` one, whose model has exactly Mistral's modules. Mixtral
(mixture of experts) belongs to the MoE plugin; ``ministral3`` (Ministral 3, with Llama-4
attention scaling, shipped as a vision-language model) is not claimed.
"""

from __future__ import annotations

from ferrule_core import ArchitectureSpec, hookimpl

MISTRAL = ArchitectureSpec(
    name="mistral",
    model_types=("mistral", "ministral"),
    blocks_path="model.layers",
    outside_modules=("model.embed_tokens", "model.rotary_emb", "model.norm", "lm_head"),
    sequential_groups=(
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        ("self_attn.o_proj",),
        ("mlp.gate_proj", "mlp.up_proj"),
        ("mlp.down_proj",),
    ),
    engine_model=None,  # the engine model lands with ferrule-engine
    weight_map={},
    description="Mistral 7B / Mistral Small / Mistral NeMo family and Ministral (dense)",
)


@hookimpl
def ferrule_register_architectures():
    return [MISTRAL]
