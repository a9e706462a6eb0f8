"""The ``mistral`` entry point: the layout of dense Mistral models.

Importing this module imports no torch or transformers.

``ministral`` is claimed too: transformers' ``AutoConfig`` turns a ``mistral`` config that
has ``layer_types`` (per-layer sliding or full attention, the Ministral-8B-Instruct-2410
layout) into a ``ministral`` one, whose model has exactly Mistral's modules. Mixtral
(mixture of experts) belongs to the MoE plugin; ``ministral3`` (Ministral 3, with Llama-4
attention scaling, shipped as a vision-language model) is not claimed.
"""

from __future__ import annotations

from ferrule_core import hookimpl
from ferrule_core.layouts import llama_like

MISTRAL = llama_like(
    "mistral",
    ("mistral", "ministral"),
    description="Mistral 7B / Mistral Small / Mistral NeMo family and Ministral (dense)",
    engine_model="ferrule_mistral.engine:MistralFamilyForCausalLM",
)


@hookimpl
def ferrule_register_architectures():
    return [MISTRAL]
