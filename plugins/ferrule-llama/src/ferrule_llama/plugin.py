"""The ``llama`` entry point: the layout of models that transformers runs as ``LlamaForCausalLM``.

Importing this module imports no torch or transformers.

``model_types`` are the Hugging Face types whose causal LM class in transformers 5.x *is*
``LlamaForCausalLM`` with Llama's checkpoint names: ``llama`` (Llama 1/2/3.x, Code Llama,
TinyLlama, Yi, DeepSeek-LLM, ...) and ``internlm3``. Types that share the module names
but compute differently (``granite``, ``gemma``, ``olmo``, ``smollm3``, ...) need their own
engine model, so they are not claimed here; nor is ``exaone``, which transformers runs as
Llama only after renaming its checkpoint keys (``transformer.h.*.attn.attention.*``), a
rename this spec's empty ``weight_map`` does not yet carry.
"""

from __future__ import annotations

from ferrule_core import hookimpl
from ferrule_core.layouts import llama_like

LLAMA = llama_like(
    "llama",
    ("llama", "internlm3"),
    description="Llama 1/2/3.x family (and InternLM3, which transformers runs as Llama)",
    engine_model="ferrule_llama.engine:LlamaForCausalLM",
)


@hookimpl
def ferrule_register_architectures():
    return [LLAMA]
