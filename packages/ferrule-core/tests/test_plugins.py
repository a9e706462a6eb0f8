from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from ferrule_core import (
    ArchitectureSpec,
    NotRegisteredError,
    PluginError,
    hookimpl,
    load_plugins,
)

ARCH_PLUGIN = """
from ferrule_core import hookimpl, ArchitectureSpec

@hookimpl
def ferrule_register_architectures():
    return [ArchitectureSpec(name="{name}", model_types=("{model_type}",),
                             blocks_path="model.layers", sequential_groups=(("mlp.fc",),))]
"""


def test_builtins_register_through_the_entry_point():
    registry = load_plugins()
    core = next(p for p in registry.plugins if p.name == "core")
    assert core.distribution == "ferrule-core" and core.version
    reference = registry.kernel("reference")
    assert reference.plugin == "core"
    assert reference.kind == "linear"


def test_loading_plugins_imports_no_torch():
    code = (
        "import sys, ferrule_core; r = ferrule_core.load_plugins(); "
        "assert r.plugins; bad = sorted(m for m in ('torch', 'transformers', 'triton') "
        "if m in sys.modules); print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_third_party_plugin_is_found_and_stamped(install_kernel_plugin):
    install_kernel_plugin("fast", "fast-int4", 10)
    registry = load_plugins()
    spec = registry.kernel("fast-int4")
    assert spec.plugin == "fast"
    info = next(p for p in registry.plugins if p.name == "fast")
    assert (info.distribution, info.version) == ("fake-fast", "0.3")


def test_a_plugin_that_fails_to_import_is_skipped_with_a_warning(
    install_plugin, install_kernel_plugin, caplog
):
    install_plugin("broken", "raise ImportError('needs a library that is not installed')")
    install_kernel_plugin("fine", "fine-int4", 1)
    with caplog.at_level(logging.WARNING, logger="ferrule.plugins"):
        registry = load_plugins()
    assert "fine-int4" in registry.kernels
    assert [f.name for f in registry.failures] == ["broken"]
    assert "needs a library that is not installed" in registry.failures[0].error
    assert "'broken'" in caplog.text and "fake-broken" in caplog.text


def test_a_plugin_whose_hook_raises_is_skipped(install_plugin, caplog):
    install_plugin(
        "raising",
        """
        from ferrule_core import hookimpl
        @hookimpl
        def ferrule_register_kernels():
            raise RuntimeError("boom")
        """,
    )
    with caplog.at_level(logging.WARNING, logger="ferrule.plugins"):
        registry = load_plugins()
    assert "reference" in registry.kernels
    assert registry.failures[0].name == "raising"
    assert "boom" in registry.failures[0].error
    assert "raising" not in {p.name for p in registry.plugins}


def test_a_hook_returning_the_wrong_type_is_a_broken_plugin(install_plugin):
    install_plugin(
        "wrongtype",
        """
        from ferrule_core import hookimpl
        @hookimpl
        def ferrule_register_kernels():
            return ["not a KernelSpec"]
        """,
    )
    registry = load_plugins()
    assert "must return KernelSpec" in registry.failures[0].error


def test_duplicate_names_raise_naming_both_plugins(install_kernel_plugin):
    install_kernel_plugin("one", "same", 1)
    install_kernel_plugin("two", "same", 2)
    with pytest.raises(PluginError, match="'same'") as info:
        load_plugins()
    assert "'one'" in str(info.value) and "'two'" in str(info.value)


def test_a_model_type_claimed_twice_raises(install_plugin):
    install_plugin("a", ARCH_PLUGIN.format(name="arch-a", model_type="llama"))
    install_plugin("b", ARCH_PLUGIN.format(name="arch-b", model_type="llama"))
    with pytest.raises(PluginError, match="'llama' is claimed twice"):
        load_plugins()


def test_a_misspelled_hook_fails_check_pending_and_drops_the_plugin(install_plugin, caplog):
    install_plugin(
        "typo",
        """
        from ferrule_core import hookimpl
        @hookimpl
        def ferrule_register_kernel():
            return []
        """,
    )
    with caplog.at_level(logging.WARNING, logger="ferrule.plugins"):
        registry = load_plugins()
    assert registry.failures[0].name == "typo"
    assert "did you mean ferrule_register_kernels?" in registry.failures[0].error
    assert "typo" not in {p.name for p in registry.plugins}
    assert "'typo'" in caplog.text


def test_allow_list_restricts_loading_but_keeps_the_core(install_kernel_plugin, monkeypatch):
    install_kernel_plugin("wanted", "wanted-k", 1)
    install_kernel_plugin("unwanted", "unwanted-k", 1)
    monkeypatch.setenv("FERRULE_LOAD_PLUGINS", "wanted")
    registry = load_plugins()
    assert "wanted-k" in registry.kernels and "reference" in registry.kernels
    assert "unwanted-k" not in registry.kernels
    # by distribution name too, and the argument overrides the environment
    assert "unwanted-k" in load_plugins(allow=["fake-unwanted"]).kernels


def test_trace_reports_loads_and_hook_calls(install_kernel_plugin, monkeypatch, capsys):
    install_kernel_plugin("traced", "traced-k", 1)
    monkeypatch.setenv("FERRULE_TRACE_PLUGINS", "1")
    load_plugins()
    err = capsys.readouterr().err
    assert "loaded plugin traced" in err
    assert "traced.ferrule_register_kernels() -> traced-k" in err


def test_plugin_objects_compose_a_stack_in_python():
    class MyStack:
        @hookimpl
        def ferrule_register_architectures(self):
            return [
                ArchitectureSpec(
                    name="toy",
                    model_types=("toy",),
                    blocks_path="layers",
                    sequential_groups=(("fc",),),
                )
            ]

    registry = load_plugins(extra=[MyStack()], use_entry_points=False)
    assert registry.architecture_for("toy").plugin == "MyStack"
    assert "reference" not in registry.kernels  # no entry points: nothing else


def test_unknown_model_type_lists_supported_and_says_how_to_add_one():
    registry = load_plugins()
    with pytest.raises(NotRegisteredError) as info:
        registry.architecture_for("no-such-model")
    message = str(info.value)
    assert "'no-such-model'" in message
    assert "ferrule_register_architectures" in message and "entry point" in message


def test_to_dict_describes_every_family():
    data = load_plugins().to_dict()
    assert set(data) == {
        "plugins",
        "failures",
        "architectures",
        "kernels",
        "quant_methods",
        "schedulers",
        "platforms",
    }
    reference = next(k for k in data["kernels"] if k["name"] == "reference")
    assert reference["bits"] == [2, 3, 4, 8] and reference["plugin"] == "core"
