"""The ``mistral`` entry point: registration, and no torch on import."""

import json
import subprocess
import sys

import pytest

from ferrule_core import load_plugins


def test_every_model_type_resolves_to_the_mistral_spec():
    registry = load_plugins()
    spec = registry.architectures["mistral"]
    assert spec.plugin == "mistral"
    assert spec.engine_model is None and dict(spec.weight_map) == {}
    assert spec.model_types == ("mistral", "ministral")
    for model_type in spec.model_types:
        assert registry.architecture_for(model_type) is spec


def test_the_plugin_module_imports_no_torch():
    code = (
        "import sys, ferrule_mistral.plugin as p; p.ferrule_register_architectures(); "
        "heavy = {'torch', 'transformers'} & set(sys.modules); assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_mistral_checkpoint_with_layer_types_still_resolves(tmp_path):
    # transformers' AutoConfig reads such a config.json as model_type "ministral".
    transformers = pytest.importorskip("transformers")
    config = transformers.MistralConfig(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16
    ).to_dict()
    config["layer_types"] = ["sliding_attention", "full_attention"]
    config["num_hidden_layers"] = 2
    (tmp_path / "config.json").write_text(json.dumps(config))
    model_type = transformers.AutoConfig.from_pretrained(tmp_path).model_type
    assert load_plugins().architecture_for(model_type).name == "mistral"
