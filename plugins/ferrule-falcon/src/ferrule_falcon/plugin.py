"""The ``falcon`` entry point: the layout of Falcon models (``model_type`` ``falcon``).

Importing this module imports no torch or transformers.

Every Falcon variant has the same four linear layers per block; the variants differ in
the norms (``input_layernorm`` alone; plus ``post_attention_layernorm`` when attention
and MLP run one after the other; ``ln_attn`` and ``ln_mlp`` in the new decoder
architecture), in the key/value heads and in rotary or ALiBi positions. In each variant
transformers calls the attention before the MLP, so the groups below are in execution
order for all of them. With parallel attention the MLP reads the normalized block input,
not the attention output, so quantizing the attention first leaves the MLP's input
unchanged; ``query_key_value`` and ``dense_h_to_4h`` still cannot share a group, because
``dense`` runs between them.
"""

from __future__ import annotations

from ferrule_core import ArchitectureSpec, hookimpl

FALCON = ArchitectureSpec(
    name="falcon",
    model_types=("falcon",),
    blocks_path="transformer.h",
    outside_modules=(
        "transformer.word_embeddings",
        "transformer.rotary_emb",
        "transformer.ln_f",
        "lm_head",
    ),
    sequential_groups=(
        ("self_attention.query_key_value",),
        ("self_attention.dense",),
        ("mlp.dense_h_to_4h",),
        ("mlp.dense_4h_to_h",),
    ),
    engine_model="ferrule_falcon.engine:FalconForCausalLM",
    weight_map={},
    description="Falcon 7B / 40B / 180B, Falcon2 11B and Falcon-RW",
)


@hookimpl
def ferrule_register_architectures():
    return [FALCON]
