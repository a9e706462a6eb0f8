"""The architecture conformance kit, exercised on a Llama layout defined here."""

from __future__ import annotations

import dataclasses

import pytest

from ferrule_core import ArchitectureSpec, hookimpl, load_plugins
from ferrule_core.testing import ArchitectureConformance, layout_problems

transformers = pytest.importorskip("transformers")

LLAMA = ArchitectureSpec(
    name="test-llama",
    model_types=("llama",),
    blocks_path="model.layers",
    outside_modules=("model.embed_tokens", "model.rotary_emb", "model.norm", "lm_head"),
    sequential_groups=(
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        ("self_attn.o_proj",),
        ("mlp.gate_proj", "mlp.up_proj"),
        ("mlp.down_proj",),
    ),
)


class _TestStack:
    @hookimpl
    def ferrule_register_architectures(self):
        return [LLAMA]


def _tiny_llama_config():
    return transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        max_position_embeddings=64,
    )


class TestLlamaLayoutPassesTheKit(ArchitectureConformance):
    architecture = "test-llama"

    def tiny_config(self):
        return _tiny_llama_config()

    def make_registry(self):
        return load_plugins(use_entry_points=False, extra=[_TestStack()])


@pytest.fixture(scope="module")
def model():
    return transformers.AutoModelForCausalLM.from_config(_tiny_llama_config()).eval()


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"blocks_path": "model.blocks"}, "blocks_path 'model.blocks' does not exist"),
        ({"blocks_path": "model.norm"}, "not a non-empty ModuleList"),
        ({"outside_modules": ("model.wte",)}, "outside module 'model.wte' does not exist"),
        (
            {"sequential_groups": LLAMA.sequential_groups[:3]},
            "linear 'mlp.down_proj' is in no sequential group",
        ),
        (
            {"sequential_groups": (*LLAMA.sequential_groups, ("self_attn.o_proj",))},
            "listed in more than one group",
        ),
        ({"sequential_groups": (*LLAMA.sequential_groups, ("mlp.act_fn",))}, "'mlp.act_fn' is a"),
        (
            {"sequential_groups": (*LLAMA.sequential_groups, ("mlp.missing",))},
            "'mlp.missing' does not exist",
        ),
    ],
)
def test_a_wrong_layout_is_caught(model, change, fragment):
    problems = layout_problems(dataclasses.replace(LLAMA, **change), model)
    assert any(fragment in p for p in problems), problems


def test_groups_out_of_execution_order_are_caught(model):
    import torch

    groups = LLAMA.sequential_groups
    swapped = dataclasses.replace(LLAMA, sequential_groups=(groups[1], groups[0], *groups[2:]))
    problems = layout_problems(swapped, model, torch.randint(0, 64, (1, 6)))
    assert problems and "runs before group" in problems[0]
