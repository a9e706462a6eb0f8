"""The ``llama`` entry point: registration, and no torch on import."""

import subprocess
import sys

import pytest

from ferrule_core import load_plugins


def test_every_model_type_resolves_to_the_llama_spec():
    registry = load_plugins()
    spec = registry.architectures["llama"]
    assert spec.plugin == "llama"
    assert spec.engine_model is None and dict(spec.weight_map) == {}
    assert spec.model_types == ("llama", "internlm3")
    for model_type in spec.model_types:
        assert registry.architecture_for(model_type) is spec


def test_claimed_types_run_as_transformers_llama():
    # The reason a type belongs here: transformers builds LlamaForCausalLM for it.
    transformers = pytest.importorskip("transformers")
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    spec = load_plugins().architectures["llama"]
    known = [t for t in spec.model_types if t in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES]
    assert "llama" in known, transformers.__version__
    for model_type in known:
        assert MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type] == "LlamaForCausalLM", model_type


def test_the_plugin_module_imports_no_torch():
    code = (
        "import sys, ferrule_llama.plugin as p; p.ferrule_register_architectures(); "
        "heavy = {'torch', 'transformers'} & set(sys.modules); assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
