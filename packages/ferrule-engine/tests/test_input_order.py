"""Act-order permutations folded into the norms and gate/up at load: same logits, no gathers."""

from __future__ import annotations

import copy

import pytest
import torch

from ferrule_core import load_plugins
from ferrule_core.config import QuantizeConfig
from ferrule_core.testing.tiny_models import tiny_config
from ferrule_engine.dummy_weights import fill_dummy_weights
from ferrule_engine.layers.context import ModelContext
from ferrule_engine.layers.norm import RMSNorm
from ferrule_engine.models.llama_like import LlamaLikeForCausalLM
from ferrule_engine.testing.models import PagedRun

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def registry():
    return load_plugins()


def test_rms_norm_emits_its_features_in_the_order_set():
    norm = RMSNorm(8, 1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x, residual = torch.randn(3, 8), torch.randn(3, 8)
    plain, (summed_plain, residual_plain) = norm(x), norm(x, residual)
    order = torch.tensor([3, 0, 7, 1, 6, 2, 5, 4])
    norm.set_output_order(order)
    torch.testing.assert_close(norm(x), plain[:, order])
    normed, summed = norm(x, residual)
    torch.testing.assert_close(normed, summed_plain[:, order])
    torch.testing.assert_close(summed, residual_plain)  # the residual stream stays in order
    with pytest.raises(ValueError, match=r"permutation of range\(8\)"):
        norm.set_output_order(torch.tensor([0, 0, 1, 2, 3, 4, 5, 6]))


def _merged_llama(registry, desc_act: bool, merge: bool = True):
    config = tiny_config("LlamaConfig")
    names = [f"model.layers.{i}.self_attn.{m}" for i in range(2) for m in MODULES]
    names += [f"model.layers.{i}.mlp.{m}" for i in range(2) for m in MLP]
    config.num_hidden_layers = 2
    quant = QuantizeConfig(bits=4, group_size=32, desc_act=desc_act, sym=False)
    ctx = ModelContext(
        dtype=torch.float32, device="cpu", registry=registry, quant=quant,
        quantized=frozenset(names),
    )  # fmt: skip
    model = LlamaLikeForCausalLM(config, ctx)
    fill_dummy_weights(model, seed=0)
    with torch.no_grad():  # norms away from 1 and larger activations, so that order matters
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
            elif "embed" in name:
                param.mul_(50)
    if merge:
        model.merge_projections()
    return model.eval()


def _logits(model):
    run = PagedRun(model, block_size=4, num_blocks=32)
    prompts = [[5, 9, 2, 7, 1, 3], [4, 4, 8]]
    first = run.step([(str(i), p, len(p)) for i, p in enumerate(prompts)])
    decode = run.step([(str(i), [6], len(p) + 1) for i, p in enumerate(prompts)])
    return torch.cat(first + decode)


@pytest.mark.parametrize("merge", [True, False])
def test_a_llama_folds_act_order_into_its_norms_and_gate_up(registry, merge):
    folded = _merged_llama(registry, desc_act=True, merge=merge)
    plain = copy.deepcopy(folded)
    folded.fold_input_orders()
    for block in folded.model.layers:
        attn, mlp = block.self_attn, block.mlp
        assert block.input_layernorm.output_order is not None
        assert block.post_attention_layernorm.output_order is not None
        for layer in [*attn.input_projections(), *mlp.input_projections(), mlp.down_proj]:
            assert not layer.desc_act and layer.input_order() is None
        assert attn.o_proj.desc_act  # fed by attention: keeps its gather
    expected, got = _logits(plain), _logits(folded)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_in_order_models_fold_nothing(registry):
    model = _merged_llama(registry, desc_act=False)
    model.fold_input_orders()
    assert all(block.input_layernorm.output_order is None for block in model.model.layers)
