"""Token embeddings and the output head.

:class:`VocabEmbedding` holds ``weight [vocab, hidden]`` and looks tokens up;
:class:`LMHead` computes ``hidden @ weight.T (+ bias)``. A tied head shares the
embedding's parameter (:meth:`LMHead.tie`), so checkpoints that omit ``lm_head.weight``
load and the two never drift apart.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ferrule_engine.layers.context import ModelContext
from ferrule_engine.layers.linear import DenseDispatch


class VocabEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, *, ctx: ModelContext):
        super().__init__()
        ctx.tp.require_single("VocabEmbedding")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.weight = nn.Parameter(
            torch.empty(vocab_size, hidden_size, dtype=ctx.dtype, device=ctx.device),
            requires_grad=False,
        )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)

    def extra_repr(self) -> str:
        return f"{self.vocab_size}, {self.hidden_size}"


class LMHead(nn.Module):
    """``tie_to``: share that embedding's weight instead of allocating one."""

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        *,
        bias: bool = False,
        ctx: ModelContext,
        tie_to: VocabEmbedding | None = None,
    ):
        super().__init__()
        ctx.tp.require_single("LMHead")
        self.dense = DenseDispatch(ctx.registry)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.tied = False
        if tie_to is not None:
            self.weight = tie_to.weight
            self.tie(tie_to)
        else:
            self.weight = nn.Parameter(
                torch.empty(vocab_size, hidden_size, dtype=ctx.dtype, device=ctx.device),
                requires_grad=False,
            )
        if bias:
            self.bias = nn.Parameter(
                torch.zeros(vocab_size, dtype=ctx.dtype, device=ctx.device), requires_grad=False
            )
        else:
            self.register_parameter("bias", None)

    def tie(self, embedding: VocabEmbedding) -> None:
        """Share ``embedding``'s weight (``tie_word_embeddings``)."""
        if embedding.weight.shape != self.weight.shape:
            raise ValueError(
                f"cannot tie an LM head of shape {tuple(self.weight.shape)} to an embedding of "
                f"shape {tuple(embedding.weight.shape)}"
            )
        self.weight = embedding.weight
        self.tied = True

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.dense(self, hidden)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, {self.vocab_size}, tied={self.tied}"
