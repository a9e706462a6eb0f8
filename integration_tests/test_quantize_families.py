"""Every architecture plugin: quantize a tiny random model, load it back, match the oracle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from ferrule_core import QuantizeConfig, load_plugins
from ferrule_core.testing import float64_oracle, max_relative_error, tiny_config, write_tiny_model
from ferrule_quant.loading import load_quantized_model
from ferrule_quant.pipeline import CalibrationOptions, quantize_model

transformers = pytest.importorskip("transformers")

FAMILIES = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 16}),
    "falcon": ("FalconConfig", {"new_decoder_architecture": True, "num_kv_heads": 2}),
    "falcon-7b-style": ("FalconConfig", {"parallel_attn": True, "multi_query": True}),
}
CALIBRATION = CalibrationOptions(
    source=["a quantized model keeps few bits per weight. " * 50], num_samples=4, seq_len=32
)
IDS = torch.tensor([[5, 99, 3, 42, 250, 7, 7, 18]])


@pytest.fixture(scope="module")
def registry():
    return load_plugins()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_quantizes_and_loads_back_with_oracle_logits(tmp_path, registry, family):
    config_class, overrides = FAMILIES[family]
    model_dir = write_tiny_model(tmp_path / "float", tiny_config(config_class, **overrides))
    config = QuantizeConfig(bits=4, group_size=32, desc_act=True)
    quantize_model(
        model_dir,
        tmp_path / "q",
        config,
        calibration=CALIBRATION,
        registry=registry,
        progress=False,
    )
    float_model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32
    ).eval()
    with torch.no_grad():
        got = load_quantized_model(tmp_path / "q", dtype=torch.float32, registry=registry)(
            IDS
        ).logits
        want = float64_oracle(float_model, tmp_path / "q")(IDS).logits
        before = float_model(IDS).logits
    assert max_relative_error(got, want) < 1e-4
    assert max_relative_error(before, want) > 1e-4  # the oracle does carry the quantization


def test_killing_quantize_and_rerunning_finishes_with_identical_tensors(tmp_path):
    config = tiny_config("LlamaConfig", hidden_size=128, intermediate_size=256, num_hidden_layers=6)
    model_dir = write_tiny_model(tmp_path / "float", config)
    text = tmp_path / "calibration.txt"
    text.write_text("Serving engines cache keys and values in blocks of tokens. " * 400)
    command = [
        sys.executable,
        "-m",
        "ferrule",
        "quantize",
        str(model_dir),
        "--bits",
        "4",
        "--group-size",
        "32",
        "--desc-act",
        "--calibration",
        str(text),
        "--num-samples",
        "16",
        "--seq-len",
        "64",
        "--quiet",
    ]
    subprocess.run([*command, "-o", str(tmp_path / "whole")], check=True, capture_output=True)

    out = tmp_path / "killed"
    process = subprocess.Popen(
        [*command, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not (out / ".ferrule-work" / "block-00001.safetensors").exists():
        assert process.poll() is None, "quantize finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "quantize_config.json").exists()

    done = subprocess.run([*command, "-o", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "blocks resumed from an earlier run" in done.stdout
    whole, resumed = (
        load_file(tmp_path / "whole" / "model.safetensors"),
        load_file(out / "model.safetensors"),
    )
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)


@pytest.mark.gpu
def test_quantize_on_cuda_and_serve_the_checkpoint_on_cuda(tmp_path, registry):
    model_dir = write_tiny_model(tmp_path / "float", tiny_config("LlamaConfig"))
    config = QuantizeConfig(bits=4, group_size=32, desc_act=True)
    report = quantize_model(
        model_dir,
        tmp_path / "q",
        config,
        calibration=CALIBRATION,
        registry=registry,
        device="cuda",
        progress=False,
    )
    assert report.peak_gpu_bytes and report.peak_gpu_bytes > 0
    float_model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32
    ).eval()
    with torch.no_grad():
        want = float64_oracle(float_model, tmp_path / "q")(IDS).logits
        on_cpu = load_quantized_model(tmp_path / "q", dtype=torch.float32, registry=registry)(
            IDS
        ).logits
        cuda_model = load_quantized_model(
            tmp_path / "q", dtype=torch.float16, device="cuda", registry=registry
        )
        on_cuda = cuda_model(IDS.cuda()).logits
    assert max_relative_error(on_cpu, want) < 1e-4
    assert max_relative_error(on_cuda.float().cpu(), want) < 2e-2
