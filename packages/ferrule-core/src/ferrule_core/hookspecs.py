"""The hook specifications every ferrule plugin implements against.

A plugin is a module named in the ``ferrule`` entry-point group. It holds functions
decorated with :data:`ferrule_core.hookimpl` whose names are the hooks below. The
built-in packages register through exactly these hooks, the same way third parties do.

Each hook is called once, by :func:`ferrule_core.load_plugins`, with no arguments,
after every plugin module is imported. It returns a list of records (or one record,
or ``None``). The loader stamps each record with the plugin's name, rejects duplicate
names (naming both plugins), and resolves everything into a plain
:class:`ferrule_core.Registry`; no hook is called again in a hot path.

The module an entry point names must not import torch, transformers or triton at
top level: put those imports inside the factories the records carry.
"""

from __future__ import annotations

import pluggy

from ferrule_core.specs import (
    ArchitectureSpec,
    KernelSpec,
    PlatformSpec,
    QuantMethodSpec,
    SchedulerSpec,
)

hookspec = pluggy.HookspecMarker("ferrule")


@hookspec
def ferrule_register_architectures() -> list[ArchitectureSpec]:
    """Return the model architectures this plugin handles.

    Called once when plugins load. Takes no arguments. Returns a list of
    :class:`~ferrule_core.ArchitectureSpec`; each ``model_type`` may be claimed by
    one plugin only.

    Example::

        @hookimpl
        def ferrule_register_architectures():
            return [
                ArchitectureSpec(
                    name="llama",
                    model_types=("llama",),
                    blocks_path="model.layers",
                    outside_modules=("model.embed_tokens", "model.rotary_emb", "model.norm"),
                    sequential_groups=(
                        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                        ("self_attn.o_proj",),
                        ("mlp.gate_proj", "mlp.up_proj"),
                        ("mlp.down_proj",),
                    ),
                    engine_model="ferrule_llama.model:LlamaForCausalLM",
                )
            ]
    """


@hookspec
def ferrule_register_kernels() -> list[KernelSpec]:
    """Return the kernels (``linear``, ``attention``, ``moe``) this plugin offers.

    Called once when plugins load. Takes no arguments. Returns a list of
    :class:`~ferrule_core.KernelSpec`. What a kernel supports is data on the record;
    ``check`` adds what data cannot say. Selection takes the highest ``priority``
    among the kernels that accept a request. A default that others should override
    is registered with ``@hookimpl(trylast=True)`` and a low priority.

    Example::

        def _make_int4(layer):
            from my_plugin.int4 import Int4Kernel  # torch is imported here, not above

            return Int4Kernel(layer)


        @hookimpl
        def ferrule_register_kernels():
            return [
                KernelSpec(
                    name="my-int4",
                    kind="linear",
                    factory=_make_int4,
                    platforms=("cuda",),
                    bits=(4,),
                    group_sizes=(32, 64, 128),
                    dtypes=("float16",),
                    min_capability=(8, 0),
                    priority=50,
                )
            ]
    """


@hookspec
def ferrule_register_quant_methods() -> list[QuantMethodSpec]:
    """Return the quantization methods (``gptq``, ``rtn``, ...) this plugin offers.

    Called once when plugins load. Takes no arguments. Returns a list of
    :class:`~ferrule_core.QuantMethodSpec` whose ``quantize_layer`` the calibration
    pipeline calls for each linear layer.

    Example::

        @hookimpl
        def ferrule_register_quant_methods():
            return [QuantMethodSpec(name="rtn", quantize_layer=_rtn, needs_calibration=False)]
    """


@hookspec
def ferrule_register_schedulers() -> list[SchedulerSpec]:
    """Return the scheduling policies this plugin offers to the engine.

    Called once when plugins load. Takes no arguments. Returns a list of
    :class:`~ferrule_core.SchedulerSpec`; ``policy`` builds the policy object.

    Example::

        @hookimpl
        def ferrule_register_schedulers():
            return [SchedulerSpec(name="priority", policy=_make_priority, preemptive=True)]
    """


@hookspec
def ferrule_register_platforms() -> list[PlatformSpec]:
    """Return the hardware platforms this plugin knows.

    Called once when plugins load. Takes no arguments. Returns a list of
    :class:`~ferrule_core.PlatformSpec`. ``select_platform()`` asks each one's
    ``check()`` whether it is usable here and takes the highest priority.

    Example::

        @hookimpl
        def ferrule_register_platforms():
            return [
                PlatformSpec(
                    name="cuda",
                    device_type="cuda",
                    check=_cuda_unavailable_reason,
                    memory=_cuda_memory,
                    distributed_backend="nccl",
                    priority=100,
                )
            ]
    """


FAMILIES: dict[str, type] = {
    "ferrule_register_architectures": ArchitectureSpec,
    "ferrule_register_kernels": KernelSpec,
    "ferrule_register_quant_methods": QuantMethodSpec,
    "ferrule_register_schedulers": SchedulerSpec,
    "ferrule_register_platforms": PlatformSpec,
}
