"""The ``qwen`` entry point: registration, and no torch on import."""

import subprocess
import sys

from ferrule_core import load_plugins


def test_every_model_type_resolves_to_the_qwen_spec():
    registry = load_plugins()
    spec = registry.architectures["qwen"]
    assert spec.plugin == "qwen"
    assert spec.engine_model is None and dict(spec.weight_map) == {}
    assert spec.model_types == ("qwen2", "qwen3")
    for model_type in spec.model_types:
        assert registry.architecture_for(model_type) is spec


def test_the_plugin_module_imports_no_torch():
    code = (
        "import sys, ferrule_qwen.plugin as p; p.ferrule_register_architectures(); "
        "heavy = {'torch', 'transformers'} & set(sys.modules); assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
