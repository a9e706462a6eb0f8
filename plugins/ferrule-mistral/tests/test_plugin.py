"""The ``mistral`` spec: checkpoints transformers renames still resolve (the kit checks the rest)."""

import json

import pytest

from ferrule_core import load_plugins


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
