"""Merging q/k/v and gate/up into one layer: same outputs, and refusals where they differ."""

from __future__ import annotations

import torch

from ferrule_core import QuantLinear, load_plugins
from ferrule_core.testing import random_gptq_tensors
from ferrule_engine.layers.linear import DenseLinear
from ferrule_engine.layers.merge import merge_linears


def _dense(out_features, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    layer = DenseLinear(32, out_features, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out_features, 32, generator=gen))
        if bias:
            layer.bias.copy_(torch.randn(out_features, generator=gen))
    return layer


def _gptq(out_features, seed, *, desc_act=False, bias=False, registry=None):
    gen = torch.Generator().manual_seed(seed)
    tensors = random_gptq_tensors(128, out_features, 4, 32, desc_act=desc_act, generator=gen)
    if desc_act:  # the same act-order permutation for every part, as GPTQ gives them
        tensors["g_idx"] = random_gptq_tensors(128, 8, 4, 32, desc_act=True)["g_idx"]
    bias_tensor = torch.randn(out_features, generator=gen).half() if bias else None
    return QuantLinear.from_tensors(
        tensors, 4, 32, bias=bias_tensor, desc_act=desc_act, registry=registry
    )


def test_dense_layers_merge_into_one_with_the_same_outputs():
    parts = [_dense(48, seed=1), _dense(16, seed=2), _dense(16, seed=3)]
    merged = merge_linears(parts)
    assert isinstance(merged, DenseLinear) and merged.out_features == 80
    x = torch.randn(5, 32)
    expected = torch.cat([p(x) for p in parts], dim=-1)
    assert torch.allclose(merged(x), expected, atol=1e-5)
    _, k, _ = merged(x).split((48, 16, 16), dim=-1)
    assert torch.allclose(k, parts[1](x), atol=1e-5)


def test_dense_layers_with_and_without_bias_stay_apart():
    assert merge_linears([_dense(16, bias=True), _dense(16, bias=False)]) is None
    assert merge_linears([_dense(16)]) is None


def test_gptq_layers_merge_with_the_same_outputs():
    registry = load_plugins()
    for desc_act in (False, True):
        parts = [
            _gptq(n, seed, desc_act=desc_act, bias=True, registry=registry)
            for seed, n in enumerate((64, 32, 32))
        ]
        merged = merge_linears(parts)
        assert isinstance(merged, QuantLinear) and merged.out_features == 128
        assert merged.desc_act == desc_act
        x = torch.randn(3, 128)
        expected = torch.cat([p(x) for p in parts], dim=-1)
        assert torch.allclose(merged(x), expected, atol=1e-4), desc_act
        weight = torch.cat([p.dequantize_weight(torch.float64) for p in parts], dim=0)
        assert torch.equal(merged.dequantize_weight(torch.float64), weight)


def test_gptq_layers_with_other_groups_or_kinds_stay_apart():
    a = _gptq(32, 0)
    b = _gptq(32, 1, desc_act=True)
    assert merge_linears([a, b]) is None, "different settings"
    c = _gptq(32, 2)
    c.g_idx.copy_(torch.flip(c.g_idx, [0]))
    assert merge_linears([a, c]) is None, "different g_idx"
    assert merge_linears([a, _dense(32)]) is None, "GPTQ and dense"


def test_a_loaded_llama_runs_merged_projections(tmp_path):
    from ferrule_core.testing.tiny_models import tiny_config, write_tiny_model
    from ferrule_engine.llm import LLM
    from ferrule_engine.sampling_params import SamplingParams

    folder = write_tiny_model(tmp_path, tiny_config("LlamaConfig"))
    llm = LLM(str(folder), dtype="float32", num_kv_blocks=64)
    block = llm.engine.loaded.model.model.layers[0]
    assert block.self_attn.qkv_proj is not None and not hasattr(block.self_attn, "q_proj")
    assert block.mlp.gate_up_proj is not None and not hasattr(block.mlp, "gate_proj")
    out = llm.generate([[1, 2, 3]], SamplingParams(max_tokens=3, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 3
