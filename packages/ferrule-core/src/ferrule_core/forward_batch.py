"""``ForwardBatch``: what one engine step hands a model, and attention kernels read.

Engine models run on flat token batches without padding: the ``T`` new tokens of ``S``
sequences lie one sequence after another in ``input_ids[T]`` and ``positions[T]``.
A sequence may bring one token (decode), its whole prompt (prefill), or a chunk of its
prompt after a cached prefix (prefix hit, chunked prefill); kernels do not care which.

The paged KV cache of one layer is ``[2, num_blocks, block_size, num_kv_heads, head_dim]``
(keys, then values). Token ``j`` of sequence ``s`` lives in block
``block_tables[s, j // block_size]`` at offset ``j % block_size``; its *slot* is
``block * block_size + offset``. Before an attention kernel runs, the layer has written the
new tokens' keys and values at ``slot_mapping`` (``-1``: do not write), so the kernel reads
every key and value, old and new, from the cache.

This module imports no torch at import time: the fields are tensors, but only their
annotations name torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class ForwardBatch:
    """The layout of one flat batch of new tokens.

    ``query_start``: int32 ``[S + 1]``, cumulative new-token counts (``cu_seqlens_q``);
    sequence ``s`` owns rows ``query_start[s]:query_start[s + 1]``.
    ``seq_lens``: int32 ``[S]``, each sequence's context length *after* this step (cached
    tokens plus new ones); the new tokens are the last ``query_len`` of them.
    ``block_tables``: int32 ``[S, max_blocks]``, padded with 0 (never read past a length).
    ``slot_mapping``: int64 ``[T]``, the cache slot of each new token's key and value.
    ``logits_indices``: int64 ``[N]``, rows of the hidden states whose next-token logits
    are needed (the last new token of each sequence that samples this step).
    ``query_lens`` and ``context_lens`` are host copies of the per-sequence counts, so that
    Python-side kernels need no device synchronisation.
    """

    query_start: Tensor
    seq_lens: Tensor
    block_tables: Tensor
    slot_mapping: Tensor
    logits_indices: Tensor
    block_size: int
    query_lens: list[int]
    context_lens: list[int]

    def __post_init__(self) -> None:
        if self.block_size <= 0:
            raise ValueError(f"ForwardBatch: block_size={self.block_size} must be positive")
        if len(self.query_lens) != len(self.context_lens):
            raise ValueError(
                f"ForwardBatch: {len(self.query_lens)} query lengths but "
                f"{len(self.context_lens)} context lengths"
            )
        for s, (q, c) in enumerate(zip(self.query_lens, self.context_lens, strict=True)):
            if q < 0 or q > c:
                raise ValueError(
                    f"ForwardBatch: sequence {s} has {q} new tokens but a context of {c}; "
                    "the new tokens are part of the context, so 0 <= query_len <= context_len"
                )

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens)

    @property
    def max_query_len(self) -> int:
        return max(self.query_lens, default=0)

    @property
    def max_seq_len(self) -> int:
        return max(self.context_lens, default=0)

    @cached_property
    def decode_only(self) -> bool:
        """Every sequence brings exactly one new token (computed once: every layer asks)."""
        return all(q == 1 for q in self.query_lens)


def check_query(who: str, query: Tensor, num_heads: int, head_dim: int) -> None:
    """Raise ``ValueError`` unless ``query`` is ``[T, num_heads, head_dim]``."""
    if query.dim() != 3 or tuple(query.shape[1:]) != (num_heads, head_dim):
        raise ValueError(
            f"{who}: query of shape {tuple(query.shape)} does not fit; expected "
            f"[T, {num_heads}, {head_dim}]"
        )


def check_kv_cache(
    who: str, kv_cache: Tensor, block_size: int, num_kv_heads: int, head_dim: int
) -> None:
    """Raise ``ValueError`` unless ``kv_cache`` is ``[2, blocks, block_size, Hkv, head_dim]``."""
    got = tuple(kv_cache.shape)
    if kv_cache.dim() != 5 or (got[0], *got[2:]) != (2, block_size, num_kv_heads, head_dim):
        raise ValueError(
            f"{who}: KV cache of shape {got} does not fit; expected "
            f"[2, num_blocks, {block_size}, {num_kv_heads}, {head_dim}]"
        )


def build_forward_batch(
    block_tables: list[list[int]],
    query_lens: list[int],
    context_lens: list[int],
    block_size: int,
    *,
    device: object = "cpu",
    sample: list[bool] | None = None,
) -> ForwardBatch:
    """A :class:`ForwardBatch` from host lists.

    ``block_tables[s]`` lists the blocks of sequence ``s`` in order (enough for
    ``context_lens[s]`` tokens); ``sample[s]`` says whether sequence ``s`` needs logits
    this step (default: all do). New tokens occupy the last ``query_lens[s]`` positions
    of each context, so their slots follow from the block table.
    """
    import torch

    if not (len(block_tables) == len(query_lens) == len(context_lens)):
        raise ValueError(
            f"build_forward_batch: {len(block_tables)} block tables, {len(query_lens)} query "
            f"lengths and {len(context_lens)} context lengths; give one of each per sequence"
        )
    sample = [True] * len(query_lens) if sample is None else sample
    slots: list[int] = []
    starts = [0]
    logits_rows: list[int] = []
    for s, (table, q, c) in enumerate(zip(block_tables, query_lens, context_lens, strict=True)):
        needed = -(-c // block_size)
        if len(table) < needed:
            raise ValueError(
                f"build_forward_batch: sequence {s} has a context of {c} tokens, which needs "
                f"{needed} blocks of {block_size}, but its block table holds {len(table)}"
            )
        for position in range(c - q, c):
            slots.append(table[position // block_size] * block_size + position % block_size)
        starts.append(starts[-1] + q)
        if sample[s] and q > 0:
            logits_rows.append(starts[-1] - 1)
    width = max((len(t) for t in block_tables), default=0)
    padded = [list(t) + [0] * (width - len(t)) for t in block_tables]
    return ForwardBatch(
        query_start=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
        block_tables=torch.tensor(padded, dtype=torch.int32, device=device).reshape(
            len(block_tables), width
        ),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        logits_indices=torch.tensor(logits_rows, dtype=torch.int64, device=device),
        block_size=block_size,
        query_lens=list(query_lens),
        context_lens=list(context_lens),
    )
