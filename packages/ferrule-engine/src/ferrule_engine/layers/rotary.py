"""Rotary position embeddings (RoPE), built from a Hugging Face config as transformers does.

The inverse frequencies come from transformers' ``ROPE_INIT_FUNCTIONS`` for scaled types
(``linear``, ``llama3``, ``yarn``, ``proportional``) and from the default formula
``1 / base**(arange(0, dim, 2) / dim)`` otherwise, with ``dim = head_dim *
partial_rotary_factor``. ``dynamic`` (NTK) and ``longrope`` are refused: transformers
recomputes their frequencies from the longest position of each forward call, which makes a
token's embedding depend on the batch it is in, and a flat engine batch cannot reproduce it.

Rotation styles: ``is_neox_style=True`` rotates the two halves of the rotary dimensions
(transformers' ``rotate_half``: Llama, Mistral, Qwen, Falcon); ``False`` rotates adjacent
pairs (GPT-J). With a partial rotary factor only the first ``rotary_dim`` features of each
head rotate; the rest pass through.

``cos`` and ``sin`` are cached per position in float32 (``cos(p * inv_freq) * scaling``,
the same arithmetic as transformers), and cast to the query dtype when applied. A ``rotary``
kernel from the registry (:mod:`.fused`) may apply them to queries and keys in one launch.
"""

from __future__ import annotations

from typing import Any

import torch

from ferrule_core.errors import ConfigError
from ferrule_engine.layers.fused import FusedModule, KernelDispatch

REFUSED_ROPE_TYPES = {
    "dynamic": "dynamic NTK scaling recomputes frequencies from each call's longest position",
    "longrope": "LongRoPE switches factor sets on each call's longest position",
}


class RotaryEmbedding(FusedModule):
    """Applies RoPE to queries and keys of shape ``[T, H * head_dim]`` or ``[T, H, head_dim]``."""

    def __init__(
        self,
        inv_freq: torch.Tensor,
        *,
        head_dim: int,
        attention_scaling: float = 1.0,
        is_neox_style: bool = True,
        max_position: int = 2048,
        device: torch.device | str | None = None,
        registry: Any = None,
    ):
        super().__init__()
        rotary_dim = 2 * inv_freq.numel()
        if rotary_dim == 0 or rotary_dim > head_dim:
            raise ConfigError(
                f"RotaryEmbedding: {inv_freq.numel()} frequencies rotate {rotary_dim} features, "
                f"which must be between 2 and head_dim={head_dim}"
            )
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim
        self.is_neox_style = is_neox_style
        self.attention_scaling = float(attention_scaling)
        self.register_buffer(
            "inv_freq", inv_freq.to(device=device, dtype=torch.float32), persistent=False
        )
        self.register_buffer("cos_cache", torch.empty(0, rotary_dim // 2), persistent=False)
        self.register_buffer("sin_cache", torch.empty(0, rotary_dim // 2), persistent=False)
        self.ensure_length(max_position)
        self.fused = KernelDispatch("rotary", registry, head_dim=head_dim)

    @classmethod
    def from_config(
        cls,
        config: Any,
        *,
        head_dim: int | None = None,
        is_neox_style: bool = True,
        layer_type: str | None = None,
        device: torch.device | str | None = None,
        registry: Any = None,
    ) -> RotaryEmbedding:
        """RoPE as transformers builds it for ``config`` (``rope_parameters``)."""
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        if head_dim is None:
            head_dim = getattr(config, "head_dim", None) or (
                config.hidden_size // config.num_attention_heads
            )
        params = rope_parameters(config, layer_type)
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type in REFUSED_ROPE_TYPES:
            raise ConfigError(
                f"rope_type={rope_type!r} is not supported: {REFUSED_ROPE_TYPES[rope_type]}; "
                f"supported: default, {', '.join(sorted(set(ROPE_INIT_FUNCTIONS) - set(REFUSED_ROPE_TYPES)))}"
            )
        if rope_type == "default":
            base = params["rope_theta"]
            dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
            exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim
            inv_freq, scaling = 1.0 / (base**exponents), 1.0
        elif rope_type in ROPE_INIT_FUNCTIONS:
            kwargs = {} if layer_type is None else {"layer_type": layer_type}
            inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, None, **kwargs)
        else:
            raise ConfigError(
                f"rope_type={rope_type!r} is unknown to transformers; supported: default, "
                f"{', '.join(sorted(set(ROPE_INIT_FUNCTIONS) - set(REFUSED_ROPE_TYPES)))}"
            )
        return cls(
            inv_freq,
            head_dim=head_dim,
            attention_scaling=scaling,
            is_neox_style=is_neox_style,
            max_position=getattr(config, "max_position_embeddings", None) or 2048,
            device=device,
            registry=registry,
        )

    def ensure_length(self, num_positions: int) -> None:
        """Grow the cos/sin cache to cover positions ``0 .. num_positions - 1``."""
        if num_positions <= self.cos_cache.shape[0]:
            return
        device = self.inv_freq.device
        positions = torch.arange(num_positions, device=device, dtype=torch.int64)
        freqs = positions[:, None].float() * self.inv_freq[None, :]
        self.cos_cache = freqs.cos() * self.attention_scaling
        self.sin_cache = freqs.sin() * self.attention_scaling

    def forward(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``query`` and ``key`` rotated by each token's position (new tensors, same shapes)."""
        if positions.numel() and positions.device.type == "cpu":
            self.ensure_length(int(positions.max()) + 1)  # free on the CPU; else pre-size
        kernel = self.fused.kernel(self, query)
        if kernel is not None:
            return kernel.forward(positions, query, key)
        cos = self.cos_cache.index_select(0, positions)[:, None, :]
        sin = self.sin_cache.index_select(0, positions)[:, None, :]
        return self._rotate(query, cos, sin), self._rotate(key, cos, sin)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(shape[0], -1, self.head_dim)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        rot, rest = x[..., : self.rotary_dim], x[..., self.rotary_dim :]
        if self.is_neox_style:
            x1, x2 = rot.chunk(2, dim=-1)
            out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        else:
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
            out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        if rest.shape[-1]:
            out = torch.cat((out, rest), dim=-1)
        return out.reshape(shape)

    def extra_repr(self) -> str:
        style = "neox" if self.is_neox_style else "gptj"
        return (
            f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, style={style}, "
            f"scaling={self.attention_scaling}"
        )


def rope_parameters(config: Any, layer_type: str | None = None) -> dict[str, Any]:
    """The config's RoPE parameters as one flat dict (transformers 5 ``rope_parameters``)."""
    params = getattr(config, "rope_parameters", None)
    if not params and hasattr(config, "standardize_rope_params"):
        config.standardize_rope_params()
        params = getattr(config, "rope_parameters", None)
    if not params:
        theta = getattr(config, "rope_theta", None)
        if theta is None:
            raise ConfigError(
                f"{type(config).__name__} has neither rope_parameters nor rope_theta; "
                "a rotary model needs its RoPE base"
            )
        params = {"rope_type": "default", "rope_theta": theta}
        factor = getattr(config, "partial_rotary_factor", None)
        if factor is not None:
            params["partial_rotary_factor"] = factor
    if layer_type is not None:
        if layer_type not in params:
            raise ConfigError(
                f"rope_parameters has no entry for layer type {layer_type!r}; "
                f"it has {', '.join(map(str, params))}"
            )
        params = params[layer_type]
    if "rope_theta" not in params:
        raise ConfigError(
            f"rope_parameters {params!r} has no rope_theta; if it is keyed by layer type, "
            "pass layer_type"
        )
    return dict(params)
