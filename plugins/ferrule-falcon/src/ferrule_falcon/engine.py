"""``FalconForCausalLM``: the engine model of Falcon (7B, 40B, 180B, Falcon2-11B), rotary only.

The variants, as transformers' ``modeling_falcon`` builds them (``FalconLayout`` below):

- old decoder (``new_decoder_architecture=False``): ``input_layernorm``; with
  ``parallel_attn`` the attention and the MLP both read it and their outputs are added to
  the residual together (7B); without it they run one after the other, the MLP reading
  ``post_attention_layernorm`` of the residual after attention. ``multi_query`` gives one KV
  head, otherwise every head has its own key and value.
- new decoder (``new_decoder_architecture=True``, always parallel): ``num_kv_heads`` grouped
  KV heads; ``ln_attn`` and ``ln_mlp`` (40B, 180B) or, with ``num_ln_in_parallel_attn=1``, one
  ``input_layernorm`` for both (Falcon2-11B).

``query_key_value`` stays one fused linear, so a GPTQ checkpoint that quantized it loads by
name, and its output is split per token. All three layouts share one split: the output holds
``kv`` groups of ``heads // kv`` query heads followed by that group's key head and value head,
``[kv, heads // kv + 2, head_dim]``, with ``kv = num_kv_heads`` (new decoder), ``1``
(multi-query: all queries, then the key, then the value) or ``heads`` (per head ``q, k, v``).
Query head ``h`` reads KV head ``h // (heads // kv)``, the grouping the attention layer uses.

ALiBi (``config.alibi=True``: Falcon-RW) is refused. Biases (``config.bias``) sit on the
four linears; the norms are ``LayerNorm`` with bias, the head has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ferrule_core.errors import ConfigError
from ferrule_core.forward_batch import ForwardBatch
from ferrule_engine.layers import (
    Attention,
    LayerNorm,
    LMHead,
    ModelContext,
    RotaryEmbedding,
    VocabEmbedding,
    activation,
    make_linear,
)
from ferrule_engine.layers.input_order import fold_into_outputs
from ferrule_engine.models.base import EngineModel

# How a block normalises its input: one norm for attention and MLP, one each, or the
# sequential block's norm before attention and norm before the MLP.
NORMS_SHARED = "input_layernorm"
NORMS_SPLIT = "ln_attn+ln_mlp"
NORMS_SEQUENTIAL = "input_layernorm+post_attention_layernorm"


@dataclass(frozen=True)
class FalconLayout:
    """What a Falcon config means for the block: its norms, whether attention and MLP run in
    parallel, and the number of KV heads the fused ``query_key_value`` holds."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    parallel: bool
    norms: str

    @classmethod
    def from_config(cls, config: Any) -> FalconLayout:
        """The layout of ``config``; a :class:`ConfigError` lists every unsupported setting."""
        problems = []
        if getattr(config, "alibi", False):
            problems.append(
                "config.alibi=True (ALiBi position biases, as in Falcon-RW) is not supported; "
                "the Falcon engine model supports rotary positions only (alibi=False)"
            )
        hidden = config.hidden_size
        heads = config.num_attention_heads
        if heads <= 0 or hidden % heads:
            problems.append(
                f"hidden_size={hidden} is not a multiple of num_attention_heads={heads}"
            )
        new = bool(getattr(config, "new_decoder_architecture", False))
        parallel = bool(getattr(config, "parallel_attn", True))
        num_ln = getattr(config, "num_ln_in_parallel_attn", None)
        config_kv = getattr(config, "num_kv_heads", None) or heads
        if num_ln not in (None, 1, 2):
            problems.append(f"num_ln_in_parallel_attn={num_ln} must be 1, 2 or null")
        if new:
            kv_heads = config_kv
            if kv_heads <= 0 or heads % kv_heads:
                problems.append(
                    f"num_attention_heads={heads} is not a multiple of num_kv_heads={kv_heads}"
                )
            if not parallel:
                # transformers builds this block's norms for a sequential block but runs it
                # as a parallel one, and fails; there is no reference to match.
                problems.append(
                    "new_decoder_architecture=True with parallel_attn=False cannot run in "
                    "transformers; the new decoder is parallel (set parallel_attn=True)"
                )
            norms = NORMS_SHARED if num_ln == 1 else NORMS_SPLIT
        else:
            multi_query = bool(getattr(config, "multi_query", True))
            kv_heads = 1 if multi_query else heads
            if not multi_query and config_kv != heads:
                problems.append(
                    f"num_kv_heads={config_kv} with multi_query=False in the old decoder: "
                    f"transformers gives every one of the {heads} heads its own key and value; "
                    f"use num_kv_heads={heads} or new_decoder_architecture=True"
                )
            if parallel and num_ln == 2:
                problems.append(
                    "num_ln_in_parallel_attn=2 needs new_decoder_architecture=True (the old "
                    "parallel block has one input_layernorm); use 1 or null"
                )
            norms = NORMS_SHARED if parallel else NORMS_SEQUENTIAL
        if problems:
            raise ConfigError([f"FalconForCausalLM: {p}" for p in problems])
        return cls(
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=hidden // heads,
            parallel=new or parallel,
            norms=norms,
        )

    @property
    def qkv_size(self) -> int:
        """Output features of the fused ``query_key_value``."""
        return (self.num_heads + 2 * self.num_kv_heads) * self.head_dim

    def split_qkv(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[T, qkv_size]`` -> queries ``[T, heads * D]``, keys and values ``[T, kv * D]``."""
        tokens = fused.shape[0]
        per_group = self.num_heads // self.num_kv_heads
        grouped = fused.view(tokens, self.num_kv_heads, per_group + 2, self.head_dim)
        query = grouped[:, :, :per_group].reshape(tokens, -1)
        key = grouped[:, :, per_group].reshape(tokens, -1)
        value = grouped[:, :, per_group + 1].reshape(tokens, -1)
        return query, key, value


class FalconAttention(nn.Module):
    """``self_attention``: fused ``query_key_value``, rotary, paged attention, ``dense``."""

    def __init__(self, config: Any, layout: FalconLayout, *, prefix: str, ctx: ModelContext):
        super().__init__()
        hidden = config.hidden_size
        bias = bool(config.bias)
        self.layout = layout
        self.query_key_value = make_linear(
            hidden, layout.qkv_size, bias=bias, prefix=f"{prefix}.query_key_value", ctx=ctx
        )
        self.dense = make_linear(
            layout.num_heads * layout.head_dim,
            hidden,
            bias=bias,
            prefix=f"{prefix}.dense",
            ctx=ctx,
            parallel="row",
        )
        self.attn = Attention(
            layout.num_heads,
            layout.num_kv_heads,
            layout.head_dim,
            scale=layout.head_dim**-0.5,
            prefix=f"{prefix}.attn",
            ctx=ctx,
        )

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        batch: ForwardBatch,
        rotary: RotaryEmbedding,
    ) -> torch.Tensor:
        query, key, value = self.layout.split_qkv(self.query_key_value(hidden))
        query, key = rotary(positions, query, key)
        return self.dense(self.attn(query, key, value, batch))


class FalconMLP(nn.Module):
    """``dense_4h_to_h(act(dense_h_to_4h(x)))`` with ``config.activation`` (gelu)."""

    def __init__(self, config: Any, *, prefix: str, ctx: ModelContext):
        super().__init__()
        hidden, ffn = config.hidden_size, config.ffn_hidden_size or 4 * config.hidden_size
        bias = bool(config.bias)
        self.dense_h_to_4h = make_linear(
            hidden, ffn, bias=bias, prefix=f"{prefix}.dense_h_to_4h", ctx=ctx
        )
        self.act = activation(config.activation)
        self.dense_4h_to_h = make_linear(
            ffn, hidden, bias=bias, prefix=f"{prefix}.dense_4h_to_h", ctx=ctx, parallel="row"
        )

    def fold_input_orders(self) -> None:
        """An act-order dense_4h_to_h takes its input in order: dense_h_to_4h emits it so (the
        activation is elementwise; see :mod:`ferrule_engine.layers.input_order`)."""
        fold_into_outputs(self.dense_4h_to_h, [self.dense_h_to_4h])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))


class FalconDecoderLayer(nn.Module):
    """``transformer.h.N``: its norms are those of the layout, named as transformers names
    them, so that each layout's checkpoint loads without renaming."""

    def __init__(self, config: Any, layout: FalconLayout, *, prefix: str, ctx: ModelContext):
        super().__init__()
        hidden, eps = config.hidden_size, config.layer_norm_epsilon
        self.norms = layout.norms
        self.parallel = layout.parallel
        if layout.norms == NORMS_SPLIT:
            self.ln_attn = LayerNorm(hidden, eps, ctx=ctx)
            self.ln_mlp = LayerNorm(hidden, eps, ctx=ctx)
        else:
            self.input_layernorm = LayerNorm(hidden, eps, ctx=ctx)
        if layout.norms == NORMS_SEQUENTIAL:
            self.post_attention_layernorm = LayerNorm(hidden, eps, ctx=ctx)
        self.self_attention = FalconAttention(
            config, layout, prefix=f"{prefix}.self_attention", ctx=ctx
        )
        self.mlp = FalconMLP(config, prefix=f"{prefix}.mlp", ctx=ctx)

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        batch: ForwardBatch,
        rotary: RotaryEmbedding,
    ) -> torch.Tensor:
        if self.norms == NORMS_SPLIT:
            attn_in, mlp_in = self.ln_attn(hidden), self.ln_mlp(hidden)
        else:
            attn_in = mlp_in = self.input_layernorm(hidden)
        attn_out = self.self_attention(positions, attn_in, batch, rotary)
        if not self.parallel:
            hidden = hidden + attn_out
            return hidden + self.mlp(self.post_attention_layernorm(hidden))
        # transformers adds the two branches first, then the residual
        return hidden + (self.mlp(mlp_in) + attn_out)


class FalconModel(nn.Module):
    """``transformer.*``: word embeddings, blocks ``h``, final ``ln_f``, shared RoPE."""

    def __init__(self, config: Any, layout: FalconLayout, ctx: ModelContext):
        super().__init__()
        self.word_embeddings = VocabEmbedding(config.vocab_size, config.hidden_size, ctx=ctx)
        self.h = nn.ModuleList(
            FalconDecoderLayer(config, layout, prefix=f"transformer.h.{i}", ctx=ctx)
            for i in range(config.num_hidden_layers)
        )
        self.ln_f = LayerNorm(config.hidden_size, config.layer_norm_epsilon, ctx=ctx)
        self.rotary_emb = RotaryEmbedding.from_config(
            config, head_dim=layout.head_dim, device=ctx.device
        )

    def forward(
        self, hidden: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch
    ) -> torch.Tensor:
        for layer in self.h:
            hidden = layer(positions, hidden, batch, self.rotary_emb)
        return self.ln_f(hidden)


class FalconForCausalLM(EngineModel):
    """Falcon for serving; see the module docstring for the variants it covers."""

    tied_weights = {"lm_head.weight": "transformer.word_embeddings.weight"}

    def __init__(self, config: Any, ctx: ModelContext):
        super().__init__(config, ctx)
        self.layout = FalconLayout.from_config(config)
        self.transformer = FalconModel(config, self.layout, ctx)
        tie = self.transformer.word_embeddings if self.ties_embeddings() else None
        self.lm_head = LMHead(config.hidden_size, config.vocab_size, ctx=ctx, tie_to=tie)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        batch: ForwardBatch,
        input_embeds: torch.Tensor | None = None,
        embeds_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = self.embed(self.transformer.word_embeddings, input_ids, input_embeds, embeds_mask)
        return self.transformer(hidden, positions, batch)
