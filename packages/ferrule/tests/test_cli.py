from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from ferrule.cli import main


@pytest.fixture
def core_only(monkeypatch):
    """Load only the core's built-ins, whatever else is installed in this environment."""
    monkeypatch.setenv("FERRULE_LOAD_PLUGINS", "")


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and "ferrule 0.1.0" in capsys.readouterr().out


def test_plugins_json_lists_plugins_families_and_platform(capsys, core_only):
    assert main(["plugins", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["plugins"][0]["name"] == "core"
    assert report["plugins"][0]["distribution"] == "ferrule-core"
    reference = next(k for k in report["kernels"] if k["name"] == "reference")
    assert reference["plugin"] == "core" and reference["platforms"] == ["*"]
    assert report["platform"] == {"selected": None, "candidates": {}}


def test_plugins_text(capsys, core_only):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "reference  (from core)" in out and "bits=2,3,4,8" in out
    assert "platform: none usable" in out


def test_validate_bits_5_exits_2_naming_the_valid_widths(capsys):
    assert main(["validate", "--bits", "5"]) == 2
    out = capsys.readouterr().out
    assert "bits=5" in out and "2, 3, 4, 8" in out


def test_validate_reports_every_problem(capsys):
    assert (
        main(["validate", "--bits", "5", "--group-size", "0", "--damp", "2", "--format", "awq"])
        == 2
    )
    out = capsys.readouterr().out
    assert "invalid: 4 problem(s)" in out
    assert "group_size=0" in out and "damp_percent=2.0" in out and "checkpoint_format='awq'" in out


def test_validate_accepts_good_flags(capsys):
    assert (
        main(
            [
                "validate",
                "--bits",
                "3",
                "--group-size",
                "64",
                "--desc-act",
                "--no-sym",
                "--format",
                "gptq_v2",
            ]
        )
        == 0
    )
    assert "valid: 3-bit, group_size 64, desc_act=True, sym=False" in capsys.readouterr().out


def _model_folder(tmp_path, down_in=128):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "toy-arch", "vocab_size": 100}))
    tensors = {
        "model.embed_tokens.weight": torch.zeros(100, 64),
        "model.layers.0.self_attn.q_proj.weight": torch.zeros(64, 64),
        "model.layers.0.mlp.down_proj.weight": torch.zeros(64, down_in),
        "model.layers.0.input_layernorm.weight": torch.zeros(64),
        "lm_head.weight": torch.zeros(100, 64),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"))
    return tmp_path


def test_validate_against_a_model_folder(tmp_path, capsys, core_only):
    folder = _model_folder(tmp_path)
    assert main(["validate", "--model", str(folder), "--group-size", "64"]) == 0
    assert "2 linear layers" in capsys.readouterr().out
    bad = _model_folder(tmp_path / "bad", down_in=96)
    assert (
        main(["validate", "--model", str(bad), "--group-size", "64", "--bits", "3", "--json"]) == 2
    )
    result = json.loads(capsys.readouterr().out)
    assert result["valid"] is False
    assert any(
        "model.layers.0.mlp.down_proj: in_features=96 is not a multiple of group_size=64" in p
        for p in result["problems"]
    )


def test_validate_against_a_kernel_and_platform(tmp_path, capsys, core_only):
    assert main(["validate", "--kernel", "reference"]) == 2
    assert "no platform is usable" in capsys.readouterr().out
    assert main(["validate", "--platform", "cpu"]) == 2
    assert "no platform named 'cpu'" in capsys.readouterr().out


def test_validate_model_folder_errors(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    assert main(["validate", "--model", str(tmp_path)]) == 1
    assert "pickled weights are not read" in capsys.readouterr().err
    assert main(["validate", "--model", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "config.json").unlink()
    assert main(["validate", "--model", str(tmp_path)]) == 1
    assert "has no config.json" in capsys.readouterr().err


def test_demo_round_trips_every_bit_width(capsys):
    assert (
        main(
            ["check-kernels", "--in-features", "256", "--out-features", "64", "--group-size", "64"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count(" exact ") == 4 and "MISMATCH" not in out
