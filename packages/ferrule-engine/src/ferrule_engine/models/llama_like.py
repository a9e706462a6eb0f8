"""A generic Llama-like decoder: the engine model of Llama, Mistral, Qwen2, Qwen3 and kin.

The families differ in a few switches, kept as class attributes that a family's subclass
sets (a bias flag is ``True``/``False`` or the name of the config attribute that holds it):

- ``qkv_bias`` / ``o_proj_bias`` / ``mlp_bias``: biases on q/k/v, on o_proj, on the MLP.
- ``qk_norm``: RMS norms ``q_norm`` / ``k_norm`` over the head dimension before RoPE (Qwen3).
- ``sliding_window_mode``: ``"none"`` (the config's ``sliding_window`` is ignored, as
  transformers' Llama does), ``"all"`` (every layer uses ``config.sliding_window``, as
  Mistral) or ``"layer_types"`` (a layer slides when ``config.layer_types[i]`` is
  ``"sliding_attention"``: Qwen2/Qwen3 with ``use_sliding_window`` and
  ``max_window_layers``, Ministral).

The head dimension is ``config.head_dim`` when set, else ``hidden_size // num_heads``;
``tie_word_embeddings`` shares the embedding with the LM head. Module names are
transformers' (``model.layers.N.self_attn.q_proj`` ...), so checkpoints load by name; the
attention kernel sits at ``self_attn.attn`` and holds no weights.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ferrule_core.errors import ConfigError
from ferrule_core.forward_batch import ForwardBatch
from ferrule_engine.layers import (
    Attention,
    GatedMLP,
    LMHead,
    ModelContext,
    RMSNorm,
    RotaryEmbedding,
    VocabEmbedding,
    make_linear,
)
from ferrule_engine.layers.input_order import fold_into_norm
from ferrule_engine.layers.merge import merge_linears
from ferrule_engine.models.base import EngineModel

WINDOW_MODES = ("none", "all", "layer_types")
LAYER_TYPES = ("full_attention", "sliding_attention")


class LlamaLikeAttention(nn.Module):
    def __init__(
        self,
        family: type[LlamaLikeForCausalLM],
        config: Any,
        layer_idx: int,
        *,
        prefix: str,
        ctx: ModelContext,
    ):
        super().__init__()
        hidden = config.hidden_size
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = family.head_dim_of(config)
        qkv_bias = family.flag(config, family.qkv_bias)
        self.head_dim = head_dim
        self.qk_norm = family.qk_norm
        self.q_proj = make_linear(
            hidden, heads * head_dim, bias=qkv_bias, prefix=f"{prefix}.q_proj", ctx=ctx
        )
        self.k_proj = make_linear(
            hidden, kv_heads * head_dim, bias=qkv_bias, prefix=f"{prefix}.k_proj", ctx=ctx
        )
        self.v_proj = make_linear(
            hidden, kv_heads * head_dim, bias=qkv_bias, prefix=f"{prefix}.v_proj", ctx=ctx
        )
        self.o_proj = make_linear(
            heads * head_dim,
            hidden,
            bias=family.flag(config, family.o_proj_bias),
            prefix=f"{prefix}.o_proj",
            ctx=ctx,
            parallel="row",
        )
        self.qkv_proj: nn.Module | None = None  # q, k, v merged once loaded
        self.qkv_sizes = (heads * head_dim, kv_heads * head_dim, kv_heads * head_dim)
        if family.qk_norm:
            self.q_norm = RMSNorm(head_dim, config.rms_norm_eps, ctx=ctx)
            self.k_norm = RMSNorm(head_dim, config.rms_norm_eps, ctx=ctx)
        self.attn = Attention(
            heads,
            kv_heads,
            head_dim,
            scale=head_dim**-0.5,
            sliding_window=family.layer_window(config, layer_idx),
            prefix=f"{prefix}.attn",
            ctx=ctx,
        )

    def merge_projections(self) -> None:
        """q, k and v as one layer (after loading; see :mod:`ferrule_engine.layers.merge`)."""
        merged = merge_linears([self.q_proj, self.k_proj, self.v_proj])
        if merged is not None:
            self.qkv_proj = merged
            del self.q_proj, self.k_proj, self.v_proj

    def input_projections(self) -> list[nn.Module]:
        """The layers that read the block's input: ``[qkv_proj]`` once merged, else q, k, v."""
        if self.qkv_proj is not None:
            return [self.qkv_proj]
        return [self.q_proj, self.k_proj, self.v_proj]

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        batch: ForwardBatch,
        rotary: RotaryEmbedding,
    ) -> torch.Tensor:
        tokens = hidden.shape[0]
        if self.qkv_proj is not None:
            q, k, v = self.qkv_proj(hidden).split(self.qkv_sizes, dim=-1)
        else:
            q, k, v = self.q_proj(hidden), self.k_proj(hidden), self.v_proj(hidden)
        if self.qk_norm:
            q = self.q_norm(q.view(tokens, -1, self.head_dim)).view(tokens, -1)
            k = self.k_norm(k.view(tokens, -1, self.head_dim)).view(tokens, -1)
        q, k = rotary(positions, q, k)
        return self.o_proj(self.attn(q, k, v, batch))


class LlamaLikeDecoderLayer(nn.Module):
    def __init__(
        self,
        family: type[LlamaLikeForCausalLM],
        config: Any,
        layer_idx: int,
        *,
        prefix: str,
        ctx: ModelContext,
    ):
        super().__init__()
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps, ctx=ctx)
        self.self_attn = LlamaLikeAttention(
            family, config, layer_idx, prefix=f"{prefix}.self_attn", ctx=ctx
        )
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, ctx=ctx)
        self.mlp = GatedMLP(
            config.hidden_size,
            config.intermediate_size,
            hidden_act=config.hidden_act,
            bias=family.flag(config, family.mlp_bias),
            prefix=f"{prefix}.mlp",
            ctx=ctx,
        )

    def fold_input_orders(self) -> None:
        """Act-order q/k/v and gate/up take their inputs in order: the norms before them emit
        them so (see :mod:`ferrule_engine.layers.input_order`)."""
        fold_into_norm(self.input_layernorm, self.self_attn.input_projections())
        if isinstance(self.mlp, GatedMLP):
            fold_into_norm(self.post_attention_layernorm, self.mlp.input_projections())

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        batch: ForwardBatch,
        rotary: RotaryEmbedding,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(block output, residual stream)``; the caller adds them (the next block's norm
        does, fused). The first block gets ``residual=None``."""
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, batch, rotary)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaLikeModel(nn.Module):
    """``model.*``: embeddings, decoder layers, final norm, and the shared rotary embedding."""

    def __init__(self, family: type[LlamaLikeForCausalLM], config: Any, ctx: ModelContext):
        super().__init__()
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size, ctx=ctx)
        self.layers = nn.ModuleList(
            LlamaLikeDecoderLayer(family, config, i, prefix=f"model.layers.{i}", ctx=ctx)
            for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, ctx=ctx)
        self.rotary_emb = RotaryEmbedding.from_config(
            config, head_dim=family.head_dim_of(config), device=ctx.device, registry=ctx.registry
        )

    def forward(
        self, hidden: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch
    ) -> torch.Tensor:
        residual = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, batch, self.rotary_emb)
        if residual is None:  # no layers
            return self.norm(hidden)
        return self.norm(hidden, residual)[0]


class LlamaLikeForCausalLM(EngineModel):
    """The decoder; a family's subclass sets the switches below (see the module docstring)."""

    qkv_bias: ClassVar[bool | str] = "attention_bias"
    o_proj_bias: ClassVar[bool | str] = "attention_bias"
    mlp_bias: ClassVar[bool | str] = "mlp_bias"
    qk_norm: ClassVar[bool] = False
    sliding_window_mode: ClassVar[str] = "none"

    def __init__(self, config: Any, ctx: ModelContext):
        super().__init__(config, ctx)
        family = type(self)
        family.check_config(config)
        self.model = LlamaLikeModel(family, config, ctx)
        tie = self.model.embed_tokens if self.ties_embeddings() else None
        self.lm_head = LMHead(config.hidden_size, config.vocab_size, ctx=ctx, tie_to=tie)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        batch: ForwardBatch,
        input_embeds: torch.Tensor | None = None,
        embeds_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = self.embed(self.model.embed_tokens, input_ids, input_embeds, embeds_mask)
        return self.model(hidden, positions, batch)

    # --- the family's switches, resolved against a config ------------------------------

    @classmethod
    def flag(cls, config: Any, value: bool | str) -> bool:
        """A switch that is either fixed or read from the config attribute it names."""
        return bool(getattr(config, value, False)) if isinstance(value, str) else value

    @classmethod
    def head_dim_of(cls, config: Any) -> int:
        return getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )

    @classmethod
    def layer_window(cls, config: Any, layer_idx: int) -> int | None:
        """Layer ``layer_idx``'s sliding window, or None when it sees its whole context."""
        window = getattr(config, "sliding_window", None)
        if cls.sliding_window_mode == "none" or window is None:
            return None
        if cls.sliding_window_mode == "all":
            return window
        layer_types = getattr(config, "layer_types", None)
        if layer_types is None:
            return window
        return window if layer_types[layer_idx] == "sliding_attention" else None

    @classmethod
    def sliding_window_of(cls, config: Any) -> int | None:
        windows = {cls.layer_window(config, i) for i in range(config.num_hidden_layers)}
        return windows.pop() if len(windows) == 1 else None

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Refuse configs this decoder would compute differently from transformers."""
        if cls.sliding_window_mode not in WINDOW_MODES:
            raise ConfigError(
                f"{cls.__name__}.sliding_window_mode={cls.sliding_window_mode!r}; "
                f"use one of {', '.join(WINDOW_MODES)}"
            )
        problems = []
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        if heads % kv_heads:
            problems.append(
                f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}"
            )
        window = getattr(config, "sliding_window", None)
        if cls.sliding_window_mode != "none" and window is not None and window <= 0:
            problems.append(f"sliding_window={window} must be positive (or null for none)")
        layer_types = getattr(config, "layer_types", None)
        if cls.sliding_window_mode == "layer_types" and layer_types is not None:
            if len(layer_types) != config.num_hidden_layers:
                problems.append(
                    f"layer_types lists {len(layer_types)} layers, the model has "
                    f"{config.num_hidden_layers}"
                )
            unknown = sorted(set(layer_types) - set(LAYER_TYPES))
            if unknown:
                problems.append(
                    f"layer_types {unknown} are not supported; use {', '.join(LAYER_TYPES)}"
                )
        if problems:
            raise ConfigError([f"{cls.__name__}: {p}" for p in problems])
