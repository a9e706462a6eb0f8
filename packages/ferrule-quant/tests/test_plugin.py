"""The ``quant`` entry point: registered through ferrule_core.load_plugins, torch-free."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ferrule_core import QuantizeConfig, load_plugins
from ferrule_quant.gptq import LayerResult


def test_importing_the_plugin_and_the_package_imports_no_torch():
    code = (
        "import sys, ferrule_quant, ferrule_quant.plugin; "
        "specs = ferrule_quant.plugin.ferrule_register_quant_methods(); "
        "assert [s.name for s in specs] == ['gptq', 'rtn'], specs; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_listing_the_installed_plugins_imports_no_torch():
    code = (
        "import sys, ferrule_core; r = ferrule_core.load_plugins(allow=['quant']); "
        "assert r.quant_method('gptq').plugin == 'quant', r.failures; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_load_plugins_registers_gptq_and_rtn_from_quant():
    registry = load_plugins(allow=["quant"])
    assert "quant" in {p.name for p in registry.plugins}, registry.failures
    gptq, rtn = registry.quant_method("gptq"), registry.quant_method("rtn")
    assert gptq.plugin == rtn.plugin == "quant"
    assert gptq.needs_calibration and not rtn.needs_calibration
    assert gptq.config_type is rtn.config_type is QuantizeConfig


def test_the_quantize_layer_functions_run_the_methods():
    registry = load_plugins(allow=["quant"])
    weight = torch.randn(32, 64)
    x = torch.randn(256, 64)
    config = QuantizeConfig(bits=4, group_size=32)
    gptq = registry.quant_method("gptq").quantize_layer(weight, 2 / 256 * x.T @ x, config, mse=True)
    rtn = registry.quant_method("rtn").quantize_layer(weight, None, config)
    assert isinstance(gptq, LayerResult) and isinstance(rtn, LayerResult)
    assert gptq.weight.shape == rtn.weight.shape == weight.shape
    with pytest.raises(ValueError, match="needs the layer's Hessian"):
        registry.quant_method("gptq").quantize_layer(weight, None, config)
