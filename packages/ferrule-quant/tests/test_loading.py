"""Loading GPTQ checkpoints into transformers models, against a float64 dequantized oracle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ferrule_core import FormatError, QuantizeConfig, QuantLinear
from ferrule_core.format import pack, pack_cols, quantize_rtn, save_checkpoint
from ferrule_core.testing import float64_oracle
from ferrule_core.testing import max_relative_error as relative_error
from ferrule_quant.loading import load_quantized_model

transformers = pytest.importorskip("transformers")

SIZES = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # k_proj / v_proj: 64 -> 32
    vocab_size=96,
    max_position_embeddings=64,
)
UP = "model.layers.0.mlp.up_proj"


def tiny_model(family: str = "llama", tie: bool = False, seed: int = 0):
    """A random float32 model whose biases and norms are not at their init values."""
    torch.manual_seed(seed)
    if family == "llama":
        config = transformers.LlamaConfig(**SIZES, tie_word_embeddings=tie)
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.Qwen2Config(**SIZES, tie_word_embeddings=tie)
        model = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    return model.eval()


def act_order_g_idx(k: int, group_size: int, gen: torch.Generator) -> torch.Tensor:
    order = torch.randperm(k, generator=gen)
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[order] = (torch.arange(k) // group_size).to(torch.int32)
    return g_idx


def quantized_state(model: nn.Module, config: QuantizeConfig) -> dict[str, torch.Tensor]:
    """The model's state dict with every decoder linear quantized (RTN, v2 zeros)."""
    gen = torch.Generator().manual_seed(1)
    state = dict(model.state_dict())
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and ".layers." in name:
            g_idx = None
            if config.desc_act:
                g_idx = act_order_g_idx(module.in_features, config.group_size, gen)
            q = quantize_rtn(
                module.weight.detach(), config.bits, config.group_size, sym=config.sym, g_idx=g_idx
            )
            del state[f"{name}.weight"]
            state.update({f"{name}.{part}": t for part, t in pack(q).items()})
    return state


def save(folder: Path, model: nn.Module, config: QuantizeConfig, **changes) -> Path:
    """Save ``model`` quantized; ``changes`` set (or with None, drop) tensors first."""
    state = quantized_state(model, config)
    for name, value in changes.items():
        state.pop(name) if value is None else state.__setitem__(name, value)
    model_config = model.config.to_dict()
    if isinstance(model, transformers.Qwen2ForCausalLM):  # as from_pretrained models have
        model_config["architectures"] = ["Qwen2ForCausalLM"]
    return save_checkpoint(folder, state, config, model_config=model_config)


INPUT_IDS = torch.tensor([[1, 5, 17, 33, 2, 90, 64, 7, 7, 41, 12, 3]])

CASES = [
    ("llama", QuantizeConfig(bits=4, group_size=32, sym=True, checkpoint_format="gptq")),
    ("llama", QuantizeConfig(bits=3, group_size=32, sym=False, checkpoint_format="gptq_v2")),
    (
        "qwen2",
        QuantizeConfig(
            bits=4, group_size=32, sym=False, desc_act=True, checkpoint_format="gptq_v2"
        ),
    ),
    ("qwen2", QuantizeConfig(bits=8, group_size=-1, sym=True, checkpoint_format="gptq")),
]


@pytest.mark.parametrize(
    ("family", "config"),
    CASES,
    ids=lambda c: c if isinstance(c, str) else f"{c.bits}b-{c.checkpoint_format}-{c.desc_act}",
)
def test_logits_match_dequantized_oracle(tmp_path: Path, family: str, config: QuantizeConfig):
    model = tiny_model(family)
    folder = save(tmp_path, model, config)
    loaded = load_quantized_model(folder, dtype=torch.float32)
    assert type(loaded) is type(model)  # by config.json's architectures, or a causal LM

    with torch.no_grad():
        want = float64_oracle(model, folder)(INPUT_IDS).logits
        got = loaded(INPUT_IDS).logits
        unquantized = model(INPUT_IDS).logits
    assert got.dtype == torch.float32
    assert relative_error(got, want) < 1e-4
    assert relative_error(unquantized, want) > 1e-3  # the oracle does see the quantization

    assert not loaded.training
    quantized = {n: m for n, m in loaded.named_modules() if isinstance(m, QuantLinear)}
    assert len(quantized) == 2 * 7
    layer = quantized["model.layers.1.self_attn.k_proj"]
    assert (layer.in_features, layer.out_features) == (64, 32)
    assert (layer.bits, layer.group_size, layer.desc_act, layer.sym) == (
        config.bits,
        config.group_size,
        config.desc_act,
        config.sym,
    )
    assert (layer.bias is not None) == (family == "qwen2")
    # v1 files come back with true (v2) zero points.
    original = model.get_submodule(UP).weight.detach()
    g_idx = quantized[UP].g_idx
    q = quantize_rtn(original, config.bits, config.group_size, sym=config.sym, g_idx=g_idx)
    assert torch.equal(quantized[UP].qzeros, pack_cols(q.zeros, config.bits))
    for name, tensor in [*loaded.named_parameters(), *loaded.named_buffers()]:
        assert not tensor.is_meta, name
    assert "quantization_config" not in loaded.config.to_dict()


def test_rotary_buffers_are_computed(tmp_path: Path):
    model = tiny_model()
    folder = save(tmp_path, model, QuantizeConfig(bits=4, group_size=32))
    loaded = load_quantized_model(folder, dtype=torch.float16)
    want = dict(model.named_buffers())
    for name, buffer in loaded.named_buffers():
        if "inv_freq" in name:
            assert buffer.dtype == torch.float32
            assert torch.equal(buffer, want[name]), name


def test_default_float16(tmp_path: Path):
    model = tiny_model("qwen2")
    config = QuantizeConfig(bits=4, group_size=32)
    folder = save(tmp_path, model, config)
    loaded = load_quantized_model(folder)
    assert loaded.model.embed_tokens.weight.dtype == torch.float16
    assert loaded.model.norm.weight.dtype == torch.float16
    layer = loaded.get_submodule(UP)
    assert layer.scales.dtype == torch.float16 and layer.qweight.dtype == torch.int32
    with torch.no_grad():
        got = loaded(INPUT_IDS).logits
        want = float64_oracle(model, folder)(INPUT_IDS).logits
    assert got.dtype == torch.float16
    assert relative_error(got, want) < 2e-2


def test_tied_embeddings(tmp_path: Path):
    model = tiny_model(tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    config = QuantizeConfig(bits=4, group_size=32)
    folder = save(tmp_path, model, config, **{"lm_head.weight": None})
    loaded = load_quantized_model(folder, dtype=torch.float32)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert not loaded.lm_head.weight.is_meta
    with torch.no_grad():
        want = float64_oracle(model, folder)(INPUT_IDS).logits
        assert relative_error(loaded(INPUT_IDS).logits, want) < 1e-4


def test_tied_weights_saved_twice_are_tied_again(tmp_path: Path):
    model = tiny_model(tie=True)
    folder = save(tmp_path, model, QuantizeConfig(bits=4, group_size=32))  # lm_head kept
    assert "lm_head.weight" in load_file(folder / "model.safetensors")
    loaded = load_quantized_model(folder, dtype=torch.float32)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


def test_untied_lm_head_must_be_there(tmp_path: Path):
    model = tiny_model(tie=False)
    folder = save(
        tmp_path, model, QuantizeConfig(bits=4, group_size=32), **{"lm_head.weight": None}
    )
    with pytest.raises(FormatError, match=r"1 tensor\(s\) the model needs are missing: lm_head"):
        load_quantized_model(folder)


def test_missing_and_unexpected_tensors(tmp_path: Path):
    model = tiny_model()
    extra = {"model.layers.0.mlp.extra.weight": torch.zeros(3)}
    folder = save(tmp_path, model, QuantizeConfig(bits=4, group_size=32), **extra)
    rewrite = load_file(folder / "model.safetensors")
    del rewrite["model.norm.weight"], rewrite["model.layers.1.input_layernorm.weight"]
    rewrite["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # old, ignored
    save_file(rewrite, folder / "model.safetensors")
    with pytest.raises(FormatError) as info:
        load_quantized_model(folder)
    message = str(info.value)
    assert "does not fit the LlamaForCausalLM its config.json describes" in message
    assert (
        "2 tensor(s) the model needs are missing: model.layers.1.input_layernorm.weight, "
        "model.norm.weight"
    ) in message
    assert (
        "1 tensor(s) in the checkpoint have no place in the model: model.layers.0.mlp.extra.weight"
    ) in message


def test_missing_quantized_tensor(tmp_path: Path):
    model = tiny_model()
    folder = save(tmp_path, model, QuantizeConfig(bits=4, group_size=32))
    rewrite = load_file(folder / "model.safetensors")
    del rewrite[f"{UP}.scales"]
    save_file(rewrite, folder / "model.safetensors")
    with pytest.raises(FormatError, match=rf"{UP}\.scales is missing"):
        load_quantized_model(folder)


def test_quantize_config_disagrees(tmp_path: Path):
    model = tiny_model()
    folder = save(tmp_path, model, QuantizeConfig(bits=4, group_size=32))
    path = folder / "quantize_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "bits": 8}))
    with pytest.raises(FormatError, match=r"says bits=8, but the tensors imply bits=4"):
        load_quantized_model(folder)


def test_model_config_disagrees(tmp_path: Path):
    model = tiny_model()
    folder = save(tmp_path, model, QuantizeConfig(bits=4, group_size=32))
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "intermediate_size": 96}))
    with pytest.raises(FormatError) as info:
        load_quantized_model(folder)
    assert (
        f"{UP}: the checkpoint holds in_features=64, out_features=128, but the model has "
        "nn.Linear(64, 96); config.json and the weights disagree"
    ) in str(info.value)

    path.write_text(json.dumps({**json.loads(path.read_text()), "intermediate_size": 128}))
    path.write_text(json.dumps({**json.loads(path.read_text()), "vocab_size": 128}))
    with pytest.raises(FormatError, match=r"size mismatch for model\.embed_tokens\.weight"):
        load_quantized_model(folder)


def test_kernel_choice_reaches_layers(tmp_path: Path):
    model = tiny_model()
    folder = save(tmp_path, model, QuantizeConfig(bits=4, group_size=32))
    loaded = load_quantized_model(folder, dtype=torch.float32, kernel="reference")
    with torch.no_grad():
        loaded(INPUT_IDS)
    layer = loaded.get_submodule(UP)
    assert layer.kernel_choice == "reference" and layer.kernel_spec.name == "reference"
