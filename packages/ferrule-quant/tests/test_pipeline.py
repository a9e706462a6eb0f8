"""The calibration pipeline end to end on tiny random models."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ferrule_core import (
    ArchitectureSpec,
    FerruleError,
    NotRegisteredError,
    QuantizeConfig,
    hookimpl,
    load_plugins,
)
from ferrule_core.testing import float64_oracle, max_relative_error, tiny_config, write_tiny_model
from ferrule_quant.loading import load_quantized_model
from ferrule_quant.pipeline import CalibrationOptions, quantize_model
from ferrule_quant.workarea import WorkArea

transformers = pytest.importorskip("transformers")

LLAMA = ArchitectureSpec(
    name="test-llama",
    model_types=("llama",),
    blocks_path="model.layers",
    sequential_groups=(
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        ("self_attn.o_proj",),
        ("mlp.gate_proj", "mlp.up_proj"),
        ("mlp.down_proj",),
    ),
)
CALIBRATION = CalibrationOptions(
    source=["the quick brown fox jumps over the lazy dog " * 40],
    num_samples=6,
    seq_len=32,
    batch_size=2,
)
IDS = torch.tensor([[3, 50, 7, 200, 9, 11, 300, 4, 8]])


class _Stack:
    @hookimpl
    def ferrule_register_architectures(self):
        return [LLAMA]


@pytest.fixture(scope="module")
def registry():
    return load_plugins(extra=[_Stack()], allow=["quant"])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    config = tiny_config("LlamaConfig", num_hidden_layers=3)
    return write_tiny_model(tmp_path_factory.mktemp("llama"), config)


def _float_model(model_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.mark.parametrize(
    "config",
    [
        QuantizeConfig(bits=4, group_size=32, sym=False),  # asymmetric in v1: zeros kept >= 1
        QuantizeConfig(
            bits=3, group_size=32, desc_act=True, sym=False, checkpoint_format="gptq_v2"
        ),
        QuantizeConfig(
            bits=4, group_size=-1, true_sequential=False, static_groups=True, desc_act=True
        ),
        QuantizeConfig(bits=8, group_size=64, quant_method="rtn"),
    ],
    ids=["4b-g32-asym-v1", "3b-act-asym-v2", "4b-perchannel-static-nonseq", "8b-rtn"],
)
def test_quantized_checkpoint_loads_back_with_oracle_logits(tmp_path, model_dir, registry, config):
    report = quantize_model(
        model_dir,
        tmp_path / "q",
        config,
        calibration=CALIBRATION,
        registry=registry,
        progress=False,
    )
    assert len(report.layers) == 3 * 7 and report.method == config.quant_method
    assert all(layer.rel_error < 0.2 for layer in report.layers)
    assert not (tmp_path / "q" / ".ferrule-work").exists()
    saved = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert (saved["bits"], saved["desc_act"], saved["quant_method"]) == (
        config.bits,
        config.desc_act,
        "gptq",
    )
    with torch.no_grad():
        got = load_quantized_model(tmp_path / "q", dtype=torch.float32, registry=registry)(
            IDS
        ).logits
        want = float64_oracle(_float_model(model_dir), tmp_path / "q")(IDS).logits
    assert max_relative_error(got, want) < 1e-4


def test_gptq_beats_rtn_on_the_calibration_objective(tmp_path, model_dir, registry):
    gptq = quantize_model(
        model_dir,
        tmp_path / "g",
        QuantizeConfig(bits=3, group_size=32),
        calibration=CALIBRATION,
        registry=registry,
        progress=False,
    )
    rtn = quantize_model(
        model_dir,
        tmp_path / "r",
        QuantizeConfig(bits=3, group_size=32, quant_method="rtn"),
        registry=registry,
        progress=False,
    )
    assert sum(layer.rel_error for layer in gptq.layers) < sum(
        layer.rel_error for layer in rtn.layers
    )
    assert all(layer.damp_percent is None for layer in rtn.layers)


def _tensors(folder):
    return load_file(folder / "model.safetensors")


def test_an_interrupted_run_resumes_to_identical_tensors(
    tmp_path, model_dir, registry, monkeypatch
):
    config = QuantizeConfig(bits=4, group_size=32, desc_act=True)
    quantize_model(
        model_dir,
        tmp_path / "whole",
        config,
        calibration=CALIBRATION,
        registry=registry,
        progress=False,
    )

    save_block = WorkArea.save_block

    def crash_after_first(self, index, tensors, stats):
        if index == 1:
            raise KeyboardInterrupt("killed")
        save_block(self, index, tensors, stats)

    monkeypatch.setattr(WorkArea, "save_block", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        quantize_model(
            model_dir,
            tmp_path / "resumed",
            config,
            calibration=CALIBRATION,
            registry=registry,
            progress=False,
        )
    assert sorted(p.name for p in (tmp_path / "resumed" / ".ferrule-work").iterdir()) == [
        "block-00000.safetensors",
        "manifest.json",
    ]
    assert not (tmp_path / "resumed" / "quantize_config.json").exists()
    monkeypatch.setattr(WorkArea, "save_block", save_block)

    report = quantize_model(
        model_dir,
        tmp_path / "resumed",
        config,
        calibration=CALIBRATION,
        registry=registry,
        progress=False,
    )
    assert report.resumed_blocks == 1 and len(report.layers) == 21
    whole, resumed = _tensors(tmp_path / "whole"), _tensors(tmp_path / "resumed")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_resuming_with_other_settings_is_refused(tmp_path, model_dir, registry):
    WorkArea(tmp_path / "q", {"config": {"bits": 3}}).open()
    with pytest.raises(FerruleError, match=r"differs in: .*config"):
        quantize_model(
            model_dir,
            tmp_path / "q",
            QuantizeConfig(),
            calibration=CALIBRATION,
            registry=registry,
            progress=False,
        )
    report = quantize_model(
        model_dir,
        tmp_path / "q",
        QuantizeConfig(quant_method="rtn"),
        restart=True,
        registry=registry,
        progress=False,
    )
    assert report.resumed_blocks == 0


def test_an_existing_checkpoint_is_not_overwritten_unless_asked(tmp_path, model_dir, registry):
    rtn = QuantizeConfig(quant_method="rtn", group_size=32)
    quantize_model(model_dir, tmp_path / "q", rtn, registry=registry, progress=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        quantize_model(model_dir, tmp_path / "q", rtn, registry=registry, progress=False)
    quantize_model(
        model_dir, tmp_path / "q", rtn, registry=registry, progress=False, overwrite=True
    )


def test_an_unknown_model_type_names_the_supported_ones(tmp_path, model_dir):
    registry = load_plugins(extra=[_Stack()], use_entry_points=False)
    config_path = tmp_path / "config.json"
    config = json.loads((model_dir / "config.json").read_text())
    config_path.write_text(json.dumps({**config, "model_type": "gemma9"}))
    with pytest.raises(NotRegisteredError, match=r"'gemma9' is not supported.*supported: llama"):
        quantize_model(
            tmp_path, tmp_path / "q", QuantizeConfig(), registry=registry, progress=False
        )
