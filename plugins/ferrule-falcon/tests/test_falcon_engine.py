"""The ``falcon`` engine model against transformers, for each rotary Falcon variant.

The kit's checks (prefill, decode, chunked and prefix-cached prefill, GPTQ, a saved
checkpoint) run per variant; the checks below them pin what is Falcon's own: the split of
the fused ``query_key_value`` against transformers' ``_split_heads``, module names, and the
configs the engine refuses (ALiBi first).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ferrule_core.errors import ConfigError
from ferrule_core.testing import tiny_config
from ferrule_engine.layers import ModelContext
from ferrule_engine.testing import EngineModelConformance
from ferrule_falcon.engine import FalconForCausalLM, FalconLayout

transformers = pytest.importorskip("transformers")

FALCON_7B = {"parallel_attn": True, "multi_query": True, "new_decoder_architecture": False}
FALCON_40B = {"parallel_attn": True, "new_decoder_architecture": True, "num_kv_heads": 2}
FALCON_2 = {**FALCON_40B, "num_ln_in_parallel_attn": 1}
SEQUENTIAL_MHA = {
    "parallel_attn": False,
    "multi_query": False,
    "new_decoder_architecture": False,
    "bias": True,
    "tie_word_embeddings": False,
}


class _FalconEngine(EngineModelConformance):
    architecture = "falcon"
    config_class = "FalconConfig"

    def reference_model(self, config, seed: int = 0) -> nn.Module:
        """The kit's weights, with every LayerNorm scale near 1: the kit recognises norms by
        "norm" in the name, which Falcon's ``ln_attn``, ``ln_mlp`` and ``ln_f`` lack."""
        model = super().reference_model(config, seed)
        gen = torch.Generator().manual_seed(seed + 1000)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.LayerNorm):
                    module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=gen))
        return model


class TestFalcon7BEngine(_FalconEngine):
    """Old decoder, attention and MLP in parallel off one norm, one shared KV head."""

    config_overrides = FALCON_7B


class TestFalcon40BEngine(_FalconEngine):
    """New decoder (40B, 180B): two KV groups, ln_attn and ln_mlp."""

    config_overrides = FALCON_40B


class TestFalcon2Engine(_FalconEngine):
    """Falcon2-11B: new decoder with one input_layernorm for attention and MLP."""

    config_overrides = FALCON_2


class TestFalconSequentialEngine(_FalconEngine):
    """Old decoder, attention then MLP, a key and value per head, biases, untied head."""

    config_overrides = SEQUENTIAL_MHA


class TestFalconGrouped8To1Engine(_FalconEngine):
    """New decoder with eight query heads sharing one KV head (a group of ten rows of the
    fused output), head dim 8."""

    config_overrides = {
        "parallel_attn": True,
        "new_decoder_architecture": True,
        "num_attention_heads": 8,
        "num_kv_heads": 1,
    }


# --- Falcon's own checks -------------------------------------------------------------------

LAYOUTS = {
    "7b": FALCON_7B,
    "40b": FALCON_40B,
    "falcon2": FALCON_2,
    "sequential-mha": SEQUENTIAL_MHA,
    "parallel-mha": {**FALCON_7B, "multi_query": False},
    "sequential-mqa": {**FALCON_7B, "parallel_attn": False},
    "new-8q-per-kv": {**FALCON_40B, "num_attention_heads": 8, "num_kv_heads": 1},
    "new-1q-per-kv": {**FALCON_40B, "num_kv_heads": 4},
}


@pytest.mark.parametrize("overrides", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_split_matches_transformers(overrides):
    """Our split of a random fused output against transformers' own, head by head: query
    head ``h`` must see KV head ``h // (heads // kv)`` as transformers' broadcast makes it."""
    config = tiny_config("FalconConfig", **overrides)
    layout = FalconLayout.from_config(config)
    reference = transformers.models.falcon.modeling_falcon.FalconAttention(config, layer_idx=0)
    tokens, heads, dim = 5, layout.num_heads, layout.head_dim
    fused = torch.randn(tokens, layout.qkv_size)
    assert reference.query_key_value.out_features == layout.qkv_size
    want_q, want_k, want_v = (t[0] for t in reference._split_heads(fused[None]))
    query, key, value = layout.split_qkv(fused)
    query = query.view(tokens, heads, dim)
    key = key.view(tokens, layout.num_kv_heads, dim)
    value = value.view(tokens, layout.num_kv_heads, dim)
    assert torch.equal(query, want_q)
    kv_of_head = torch.arange(heads) // (heads // layout.num_kv_heads)
    if want_k.shape[1] == 1:  # multi-query: transformers keeps the one head unbroadcast
        want_k, want_v = want_k.expand(-1, heads, -1), want_v.expand(-1, heads, -1)
    assert torch.equal(key[:, kv_of_head], want_k)
    assert torch.equal(value[:, kv_of_head], want_v)


@pytest.mark.parametrize("overrides", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_module_names_mirror_transformers(overrides):
    """Every tensor name transformers saves is a tensor of ours, and no more (the head too
    when untied), so float and GPTQ checkpoints load by name."""
    config = tiny_config("FalconConfig", **overrides)
    reference = transformers.AutoModelForCausalLM.from_config(config)
    expected = set(reference.state_dict())
    engine = FalconForCausalLM(config, ModelContext())
    assert set(engine.state_dict()) == expected
    assert engine.lm_head.tied == bool(config.tie_word_embeddings)
    kv = {layer.num_kv_heads for layer in engine.attention_layers()}
    assert kv == {FalconLayout.from_config(config).num_kv_heads}


def test_gptq_fused_query_key_value_is_one_quantized_linear():
    config = tiny_config("FalconConfig", **FALCON_40B)
    quant = EngineModelConformance.quantize_config
    prefix = "transformer.h.0.self_attention.query_key_value"
    engine = FalconForCausalLM(config, ModelContext(quant=quant, quantized=frozenset({prefix})))
    layer = engine.get_submodule(prefix)
    assert type(layer).__name__ == "QuantLinear"
    assert (layer.in_features, layer.out_features) == (64, (4 + 2 * 2) * 16)
    names = {n for n in engine.state_dict() if n.startswith(prefix)}
    assert names == {f"{prefix}.{t}" for t in ("qweight", "qzeros", "scales", "g_idx")}


def test_act_order_mlp_folds_its_down_projection_into_dense_h_to_4h():
    """dense_4h_to_h's act-order permutation goes into dense_h_to_4h's outputs at load (the
    kit's GPTQ test checks the logits); the MLP's output is unchanged."""
    import copy

    from ferrule_core import load_plugins
    from ferrule_engine.dummy_weights import fill_dummy_weights
    from ferrule_falcon.engine import FalconMLP

    config = tiny_config("FalconConfig", **FALCON_40B)
    quant = EngineModelConformance.quantize_config  # act-order
    names = frozenset(f"mlp.{m}" for m in ("dense_h_to_4h", "dense_4h_to_h"))
    ctx = ModelContext(dtype=torch.float32, quant=quant, quantized=names, registry=load_plugins())
    mlp = FalconMLP(config, prefix="mlp", ctx=ctx)
    fill_dummy_weights(mlp)
    plain = copy.deepcopy(mlp)
    mlp.fold_input_orders()
    assert not mlp.dense_4h_to_h.desc_act and plain.dense_4h_to_h.desc_act
    x = torch.randn(5, config.hidden_size)
    with torch.no_grad():
        expected = plain(x)
        torch.testing.assert_close(mlp(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max())


def test_alibi_is_refused_naming_the_setting_and_what_works():
    config = tiny_config(
        "FalconConfig", alibi=True, parallel_attn=False, multi_query=False, bias=True
    )
    with pytest.raises(ConfigError) as raised:
        FalconForCausalLM(config, ModelContext())
    message = str(raised.value)
    assert "config.alibi=True" in message
    assert "rotary" in message and "alibi=False" in message


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({**FALCON_40B, "num_kv_heads": 3}, "not a multiple of num_kv_heads=3"),
        ({**FALCON_40B, "parallel_attn": False}, "parallel_attn=False"),
        ({**FALCON_7B, "num_ln_in_parallel_attn": 2}, "num_ln_in_parallel_attn=2"),
        ({**FALCON_40B, "num_ln_in_parallel_attn": 3}, "num_ln_in_parallel_attn=3"),
        ({**SEQUENTIAL_MHA, "num_kv_heads": 2}, "num_kv_heads=2 with multi_query=False"),
    ],
    ids=["kv-not-dividing", "new-sequential", "old-two-norms", "three-norms", "old-mha-kv"],
)
def test_configs_transformers_cannot_run_are_refused(overrides, needle):
    """Refused up front with the setting named, where transformers fails inside a forward."""
    config = tiny_config("FalconConfig", **overrides)
    with pytest.raises(ConfigError, match=needle):
        FalconForCausalLM(config, ModelContext())
    with pytest.raises((RuntimeError, AttributeError, NameError, ValueError)):
        transformers.AutoModelForCausalLM.from_config(config)(torch.tensor([[1, 2, 3]]))


def test_attention_scale_and_heads():
    config = tiny_config("FalconConfig", **FALCON_7B)
    (first, *_) = FalconForCausalLM(config, ModelContext()).attention_layers()
    assert (first.num_heads, first.num_kv_heads, first.head_dim) == (4, 1, 16)
    assert math.isclose(first.scale, 1 / math.sqrt(16))
    assert first.sliding_window is None
    assert FalconForCausalLM.sliding_window_of(config) is None
