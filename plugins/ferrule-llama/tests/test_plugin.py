"""The ``llama`` spec: which model types it claims, and why (the kit checks the rest)."""

import pytest

from ferrule_core import load_plugins


def test_claimed_types_run_as_transformers_llama():
    # The reason a type belongs here: transformers builds LlamaForCausalLM for it.
    transformers = pytest.importorskip("transformers")
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    spec = load_plugins().architectures["llama"]
    known = [t for t in spec.model_types if t in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES]
    assert "llama" in known, transformers.__version__
    for model_type in known:
        assert MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type] == "LlamaForCausalLM", model_type
