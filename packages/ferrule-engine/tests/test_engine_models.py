"""``EngineModel`` machinery (weight loading, dispatch, embeddings) and the Llama-like
decoder's switches, on tiny configs. The logits themselves are checked against
transformers by the conformance kit in each architecture plugin's tests."""

import pytest
import torch

from ferrule_core import QuantizeConfig
from ferrule_core.errors import ConfigError, FormatError
from ferrule_core.forward_batch import build_forward_batch
from ferrule_core.testing import tiny_config
from ferrule_engine.layers import ModelContext
from ferrule_engine.models import EngineModel, LlamaLikeForCausalLM, ModelTypeDispatch

pytest.importorskip("transformers")


class Plain(LlamaLikeForCausalLM):
    sliding_window_mode = "none"


class AllLayers(LlamaLikeForCausalLM):
    sliding_window_mode = "all"


class PerLayer(LlamaLikeForCausalLM):
    sliding_window_mode = "layer_types"
    qkv_bias = True
    o_proj_bias = False


class Renamed(Plain):
    weight_map = {r"^transformer\.": "model."}


class Family(ModelTypeDispatch):
    models = {"llama": Plain, "mistral": AllLayers}


def _weights(model: EngineModel, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(v.shape, generator=gen)
        if v.dtype.is_floating_point
        else torch.randint(0, 8, v.shape, generator=gen, dtype=v.dtype)
        for k, v in model.state_dict().items()
    }


def _llama(**overrides):
    return tiny_config("LlamaConfig", **overrides)


def test_load_weights_fills_every_tensor_and_converts_dtypes():
    model = Plain(_llama(), ModelContext(dtype=torch.bfloat16))
    weights = _weights(model)
    half = {k: v.half() for k, v in weights.items()}
    model.load_weights([*half.items(), ("model.rotary_emb.inv_freq", torch.ones(8))])
    for name, tensor in model.state_dict().items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, weights[name].half().bfloat16()), name


def test_load_weights_lists_missing_unexpected_and_misshapen_tensors():
    model = Plain(_llama(), ModelContext())
    weights = _weights(model)
    del weights["model.norm.weight"]
    weights["model.layers.0.self_attn.q_proj.weight"] = torch.ones(3, 3)
    weights["model.layers.9.mlp.up_proj.weight"] = torch.ones(1)
    with pytest.raises(FormatError) as raised:
        model.load_weights(weights.items())
    message = str(raised.value)
    assert "1 tensors missing from the checkpoint: model.norm.weight" in message
    assert "not in the model: model.layers.9.mlp.up_proj.weight" in message
    assert "q_proj.weight: checkpoint (3, 3), model (64, 64)" in message


def test_tied_head_may_be_absent_untied_may_not():
    tied = Plain(_llama(tie_word_embeddings=True), ModelContext())
    weights = _weights(tied)
    weights.pop("lm_head.weight")
    tied.load_weights(weights.items())
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    untied = Plain(_llama(), ModelContext())
    with pytest.raises(FormatError, match=r"missing from the checkpoint: lm_head\.weight"):
        untied.load_weights(weights.items())


def test_gptq_layers_load_their_tensors_and_spare_zero_biases():
    up = "model.layers.0.mlp.up_proj"
    ctx = ModelContext(quant=QuantizeConfig(bits=4, group_size=32), quantized=frozenset({up}))
    model = Plain(_llama(), ctx)
    weights = _weights(model)
    assert {f"{up}.{n}" for n in ("qweight", "qzeros", "scales", "g_idx")} <= set(weights)
    weights[f"{up}.bias"] = torch.zeros(128)  # older AutoGPTQ writes one for every layer
    model.load_weights(weights.items())
    assert torch.equal(model.get_submodule(up).qweight, weights[f"{up}.qweight"])
    weights[f"{up}.bias"] = torch.ones(128)
    with pytest.raises(
        FormatError, match=r"not in the model: model\.layers\.0\.mlp\.up_proj\.bias"
    ):
        model.load_weights(weights.items())
    weights[f"{up}.bias"] = torch.zeros(128)
    weights[f"{up}.qweight"] = weights[f"{up}.qweight"].float()
    with pytest.raises(FormatError, match=r"checkpoint dtype torch\.float32, model torch\.int32"):
        model.load_weights(weights.items())


def test_weight_map_renames_checkpoint_names():
    model = Renamed(_llama(), ModelContext())
    weights = {k.replace("model.", "transformer.", 1): v for k, v in _weights(model).items()}
    model.load_weights(weights.items())
    assert torch.equal(model.model.norm.weight, weights["transformer.norm.weight"])


def test_dispatch_builds_the_class_for_the_model_type():
    llama = _llama()
    assert Family.resolve(llama) is Plain
    built = Family(llama, ModelContext())
    assert type(built) is Plain
    mistral = tiny_config("MistralConfig", sliding_window=7)
    assert Family.sliding_window_of(mistral) == 7
    with pytest.raises(ConfigError, match="serves model_type 'llama', 'mistral', not 'qwen2'"):
        Family.resolve(tiny_config("Qwen2Config"))


def test_window_modes():
    mistral = tiny_config("MistralConfig", sliding_window=7)
    assert [a.sliding_window for a in Plain(mistral, ModelContext()).attention_layers()] == [
        None,
        None,
    ]
    assert AllLayers.sliding_window_of(mistral) == 7
    qwen = tiny_config(
        "Qwen2Config", use_sliding_window=True, sliding_window=5, max_window_layers=1
    )
    model = PerLayer(qwen, ModelContext())
    assert [a.sliding_window for a in model.attention_layers()] == [None, 5]
    assert PerLayer.sliding_window_of(qwen) is None  # one layer sees everything: keep blocks
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    assert model.model.layers[0].self_attn.o_proj.bias is None


def test_config_refusals_name_the_problem():
    with pytest.raises(ConfigError, match=r"layer_types \['chunked_attention'\]"):
        PerLayer(
            tiny_config("Qwen2Config", layer_types=["chunked_attention", "full_attention"]),
            ModelContext(),
        )
    with pytest.raises(ConfigError, match="rope_type='dynamic' is not supported"):
        Plain(
            _llama(rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}),
            ModelContext(),
        )


def test_input_embeds_replace_the_masked_rows(monkeypatch):
    model = Plain(_llama(num_hidden_layers=1), ModelContext())
    model.load_weights(_weights(model).items())
    seen = []
    monkeypatch.setattr(
        model.model, "forward", lambda hidden, positions, batch: seen.append(hidden)
    )
    ids = torch.tensor([1, 2, 3])
    images = torch.randn(3, 64)
    batch = build_forward_batch([[1]], [3], [3], 4)
    model(ids, torch.arange(3), batch)
    model(ids, torch.arange(3), batch, images, torch.tensor([False, True, False]))
    model(ids, torch.arange(3), batch, images)
    plain, mixed, full = seen
    assert torch.equal(plain, model.model.embed_tokens.weight[ids])
    assert torch.equal(mixed[1], images[1]) and torch.equal(mixed[::2], plain[::2])
    assert torch.equal(full, images)
    logits = model.compute_logits(plain.bfloat16().float())
    assert logits.dtype == torch.float32 and logits.shape == (3, 320)
