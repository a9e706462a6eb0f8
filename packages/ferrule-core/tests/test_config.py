from __future__ import annotations

import json

import pytest

from ferrule_core import ConfigError, QuantizeConfig


def test_defaults_are_valid_and_round_trip(tmp_path):
    config = QuantizeConfig()
    assert (config.bits, config.group_size, config.checkpoint_format) == (4, 128, "gptq")
    config.save(tmp_path)
    assert QuantizeConfig.load(tmp_path) == config
    assert [p.name for p in tmp_path.iterdir()] == ["quantize_config.json"]


def test_bad_bits_names_the_valid_widths():
    with pytest.raises(ConfigError) as info:
        QuantizeConfig(bits=5)
    assert "bits=5" in str(info.value) and "2, 3, 4, 8" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"group_size": 0}, "group_size=0 is invalid: use -1"),
        ({"group_size": -2}, "group_size=-2"),
        ({"damp_percent": 0}, "strictly between 0 and 1"),
        ({"damp_percent": 1.0}, "strictly between 0 and 1"),
        ({"damp_percent": "a lot"}, "must be a number"),
        ({"checkpoint_format": "gptq_v3"}, "'gptq' (v1"),
        ({"checkpoint_format": "marlin"}, "Marlin-repacked"),
        ({"quant_method": "awq"}, "not a GPTQ-format method"),
        ({"sym": "yes"}, "sym='yes' must be true or false"),
        ({"bits": True}, "bits=True"),
    ],
)
def test_each_rule_names_value_and_suggestion(kwargs, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        QuantizeConfig(**kwargs)
    assert fragment in str(info.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        QuantizeConfig(bits=5, group_size=0, damp_percent=2)
    assert len(info.value.problems) == 3


def test_reads_the_names_other_tools_write():
    config = QuantizeConfig.from_dict(
        {
            "wbits": 3,
            "groupsize": 64,
            "act_order": True,
            "format": "gptq_v2",
            "sym": False,
            "damp_percent": 0.05,
            "model_name_or_path": "somewhere",
            "meta": {"quantizer": "x"},
        }
    )
    assert (config.bits, config.group_size, config.desc_act) == (3, 64, True)
    assert config.checkpoint_format == "gptq_v2" and config.sym is False
    assert config.extras == {"model_name_or_path": "somewhere", "meta": {"quantizer": "x"}}
    written = config.to_dict()
    assert written["model_name_or_path"] == "somewhere" and written["bits"] == 3


def test_autogptq_file_and_marlin_flag():
    autogptq = {
        "bits": 4,
        "group_size": 128,
        "damp_percent": 0.01,
        "desc_act": False,
        "static_groups": False,
        "sym": True,
        "true_sequential": True,
        "model_name_or_path": None,
        "model_file_base_name": "model",
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
    }
    assert QuantizeConfig.from_dict(autogptq).bits == 4
    with pytest.raises(ConfigError, match="Marlin"):
        QuantizeConfig.from_dict({**autogptq, "is_marlin_format": True})


def test_loads_from_config_json_quantization_config(tmp_path):
    block = {
        "quant_method": "GPTQ",
        "bits": 8,
        "group_size": -1,
        "desc_act": True,
        "use_exllama": False,
    }
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "llama", "quantization_config": block})
    )
    config = QuantizeConfig.load(tmp_path)
    assert (config.bits, config.group_size, config.quant_method) == (8, -1, "gptq")
    assert config.extras == {"use_exllama": False}
    with pytest.raises(FileNotFoundError, match=r"quantize_config.json"):
        QuantizeConfig.load(tmp_path / "missing")


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    config = QuantizeConfig(extras={"unserialisable": object()})
    with pytest.raises(TypeError):
        config.save(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_layer_problems():
    config = QuantizeConfig(bits=3, group_size=128)
    assert config.layer_problems("ok", 256, 64) == []
    problems = config.layer_problems("mlp.down_proj", 200, 100)
    assert any("not a multiple of group_size=128" in p for p in problems)
    assert any(
        "in_features=200 cannot be packed at 3 bits" in p and "multiple of 32" in p
        for p in problems
    )
    assert any("out_features=100" in p for p in problems)


def test_min_zero_guards_asymmetric_v1_only():
    assert QuantizeConfig(sym=False).min_zero == 1
    assert QuantizeConfig(sym=False, checkpoint_format="gptq_v2").min_zero == 0
    assert QuantizeConfig(sym=True).min_zero == 0
