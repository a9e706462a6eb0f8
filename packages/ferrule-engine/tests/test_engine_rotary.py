"""``RotaryEmbedding`` against transformers' RoPE (and a naive rotation for GPT-J style)."""

import pytest
import torch

from ferrule_core.errors import ConfigError
from ferrule_engine.layers import RotaryEmbedding

transformers = pytest.importorskip("transformers")
from transformers.models.llama import modeling_llama  # noqa: E402

ROPES = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "llama3": {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    },
    "yarn": {
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 4.0,
        "original_max_position_embeddings": 32,
    },
}


def _config(rope, **overrides):
    return transformers.LlamaConfig(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_parameters=dict(rope),
        **overrides,
    )


def _hf_rotate(config, positions, q, k):
    rotary = modeling_llama.LlamaRotaryEmbedding(config)
    cos, sin = rotary(q, positions[None])
    q4, k4 = q.transpose(0, 1)[None], k.transpose(0, 1)[None]  # [1, H, T, D]
    q4, k4 = modeling_llama.apply_rotary_pos_emb(q4, k4, cos, sin)
    return q4[0].transpose(0, 1), k4[0].transpose(0, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rope", list(ROPES))
def test_matches_transformers(rope, dtype):
    config = _config(ROPES[rope])
    positions = torch.tensor([0, 1, 2, 7, 31, 33, 100, 127, 5])
    q = torch.randn(len(positions), 4, 16).to(dtype)
    k = torch.randn(len(positions), 2, 16).to(dtype)
    rotary = RotaryEmbedding.from_config(config)
    got_q, got_k = rotary(positions, q.reshape(len(positions), -1), k)
    want_q, want_k = _hf_rotate(config, positions, q, k)
    assert got_q.dtype == dtype and got_q.shape == (len(positions), 64)
    assert torch.equal(got_q.view_as(q), want_q) and torch.equal(got_k, want_k)


def test_positions_past_the_configured_length_grow_the_cache():
    config = _config(ROPES["default"])
    rotary = RotaryEmbedding.from_config(config)
    positions = torch.tensor([300, 129])
    q, k = torch.randn(2, 4, 16), torch.randn(2, 2, 16)
    got_q, _ = rotary(positions, q, k)
    want_q, _ = _hf_rotate(config, positions, q, k)
    assert torch.allclose(got_q, want_q, atol=1e-6)


def test_partial_rotary_rotates_the_first_features_only():
    rope = {**ROPES["default"], "partial_rotary_factor": 0.5}
    rotary = RotaryEmbedding.from_config(_config(rope))
    assert rotary.rotary_dim == 8
    positions = torch.arange(6)
    q = torch.randn(6, 4, 16)
    got, _ = rotary(positions, q, q[:, :2])
    assert torch.equal(got[..., 8:], q[..., 8:])
    # the rotated part is full RoPE of an 8-dim head with the same base
    small = RotaryEmbedding.from_config(_config(ROPES["default"], head_dim=8))
    want, _ = small(positions, q[..., :8].contiguous(), q[:, :2, :8].contiguous())
    assert torch.allclose(got[..., :8], want, atol=1e-6)


def test_gptj_style_rotates_adjacent_pairs():
    inv_freq = 1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8)
    rotary = RotaryEmbedding(inv_freq, head_dim=8, is_neox_style=False)
    positions = torch.tensor([0, 3, 9])
    x = torch.randn(3, 2, 8, dtype=torch.float64)
    got, _ = rotary(positions, x.float(), x.float())
    pairs = torch.view_as_complex(x.reshape(3, 2, 4, 2).contiguous())
    angle = positions[:, None, None].double() * inv_freq.double()
    want = torch.view_as_real(pairs * torch.polar(torch.ones_like(angle), angle)).reshape(3, 2, 8)
    assert torch.allclose(got.double(), want, atol=1e-5)


LONGROPE = {"long_factor": [1.0] * 8, "short_factor": [1.0] * 8}


@pytest.mark.parametrize("rope_type", ["dynamic", "longrope"])
def test_batch_dependent_ropes_are_refused(rope_type):
    extra = LONGROPE if rope_type == "longrope" else {}
    config = _config({"rope_type": rope_type, "rope_theta": 10000.0, "factor": 2.0, **extra})
    with pytest.raises(ConfigError, match=f"rope_type='{rope_type}' is not supported"):
        RotaryEmbedding.from_config(config)


def test_too_many_frequencies_for_the_head_are_refused():
    with pytest.raises(ConfigError, match="head_dim=4"):
        RotaryEmbedding(torch.ones(4), head_dim=4)
