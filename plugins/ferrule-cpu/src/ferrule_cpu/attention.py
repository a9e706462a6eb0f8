"""``torch-paged-attention``: attention over the paged KV cache with torch's SDPA.

The layer has already written the new tokens' keys and values into the cache, so each
sequence's keys and values are gathered from the cache ``[2, NB, BS, Hkv, D]`` through its
block table, whole blocks at a time (``index_select`` of ``BS * Hkv * D`` contiguous values
per block, an order of magnitude faster on the CPU than gathering token rows). Only the
blocks holding positions the new tokens can see are gathered: with a sliding window ``W``,
a new token at ``p`` sees ``q`` with ``q <= p`` and ``p - q < W`` (transformers'
``sliding_window_overlay``: ``kv_idx > q_idx - W``). Gathered positions outside that range
(the ends of the first and last blocks, padding) are sliced off, or for decode masked out,
and those past the context zeroed: a slot nobody wrote may hold anything, even NaN, and a
masked NaN would still poison the softmax.

- Sequences with one new token (decode) run together, sorted by length and in groups whose
  gather stays under ``GATHER_BUDGET``, one SDPA call per group over a padded gather
  ``[S, Hkv, L, D]``; the query heads that share a KV head are laid out as that head's
  ``G = Hq / Hkv`` query rows, so grouped-query attention needs no copy of the keys.
- Other sequences (prefill, chunked prefill, prefill after a cached prefix) run one SDPA
  call each. A whole prompt without a window uses SDPA's own causal mask; otherwise an
  explicit boolean mask says which keys each query sees.

Softmax runs in the query dtype as torch's SDPA does (float32 math inside for half types).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ferrule_core.forward_batch import ForwardBatch, check_kv_cache, check_query

NAME = "torch-paged-attention"
GATHER_BUDGET = 16 << 20  # bytes of keys and values one decode SDPA call gathers
_HAS_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


class TorchPagedAttention:
    name = NAME

    def __init__(self, layer):
        self.num_heads = layer.num_heads
        self.num_kv_heads = layer.num_kv_heads
        self.head_dim = layer.head_dim
        self.scale = layer.scale
        self.sliding_window = layer.sliding_window
        self.groups = self.num_heads // self.num_kv_heads

    def forward(
        self, query: torch.Tensor, kv_cache: torch.Tensor, batch: ForwardBatch
    ) -> torch.Tensor:
        """``[T, Hq, D]`` outputs for the ``[T, Hq, D]`` queries of ``batch``'s new tokens."""
        self._check(query, kv_cache, batch)
        out = torch.empty_like(query)
        if query.shape[0] == 0:
            return out
        starts = [0]
        for n in batch.query_lens:
            starts.append(starts[-1] + n)
        for group in self._decode_groups(batch):
            rows = [starts[s] for s in group]
            out[rows] = self._decode(query[rows], kv_cache, batch, group)
        for s, n in enumerate(batch.query_lens):
            if n > 1:
                first = starts[s]
                out[first : first + n] = self._prefill(query[first : first + n], kv_cache, batch, s)
        return out

    def _first_key(self, first_query: int) -> int:
        """The first position a query at ``first_query`` (or later) can see."""
        return max(0, first_query - self.sliding_window + 1) if self.sliding_window else 0

    # --- one SDPA call per group of single-token sequences -------------------------------

    def _decode_groups(self, batch: ForwardBatch) -> list[list[int]]:
        """Single-token sequences in groups of similar length whose padded gather stays
        under ``GATHER_BUDGET`` bytes (large gathers cost page faults, not just copies)."""
        block_size = batch.block_size
        decode = [s for s, n in enumerate(batch.query_lens) if n == 1]
        decode.sort(key=lambda s: batch.context_lens[s])
        bytes_per_block = 2 * block_size * self.num_kv_heads * self.head_dim * 4  # float32
        groups: list[list[int]] = []
        for s in decode:
            c = batch.context_lens[s]
            first_block = self._first_key(c - 1) // block_size
            blocks = (c - 1) // block_size - first_block + 1  # the group's widest, as sorted
            if groups and (len(groups[-1]) + 1) * blocks * bytes_per_block <= GATHER_BUDGET:
                groups[-1].append(s)
            else:
                groups.append([s])
        return groups

    def _decode(self, query, kv_cache, batch: ForwardBatch, seqs: list[int]):
        block_size, device = batch.block_size, query.device
        lens = [batch.context_lens[s] for s in seqs]
        firsts = [self._first_key(c - 1) for c in lens]
        first_blocks = [f // block_size for f in firsts]
        counts = [(c - 1) // block_size - b + 1 for c, b in zip(lens, first_blocks, strict=True)]
        width = max(counts)
        start = torch.tensor(first_blocks, device=device)[:, None]
        columns = torch.minimum(
            start + torch.arange(width, device=device)[None, :],
            torch.tensor(
                [b + n - 1 for b, n in zip(first_blocks, counts, strict=True)], device=device
            )[:, None],
        )  # padding repeats each sequence's last block; the mask hides it
        tables = batch.block_tables[torch.tensor(seqs, device=device)].long()
        k, v = _gather_blocks(kv_cache, tables.gather(1, columns), query.dtype)  # [S,L,Hkv,D]
        for row, (c, b) in enumerate(zip(lens, first_blocks, strict=True)):
            k[row, c - b * block_size :] = 0  # slots past a context may hold anything, even
            v[row, c - b * block_size :] = 0  # NaN, which a mask alone would not hide
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # [S, Hkv, L, D]
        positions = start * block_size + torch.arange(width * block_size, device=device)
        mask = (positions < torch.tensor(lens, device=device)[:, None]) & (
            positions >= torch.tensor(firsts, device=device)[:, None]
        )
        q = query.view(len(seqs), self.num_kv_heads, self.groups, self.head_dim)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask[:, None, None, :], scale=self.scale
        )
        return out.reshape(len(seqs), self.num_heads, self.head_dim)

    # --- one SDPA call per multi-token sequence ------------------------------------------

    def _prefill(self, query, kv_cache, batch: ForwardBatch, s: int):
        block_size, device = batch.block_size, query.device
        count, context = query.shape[0], batch.context_lens[s]
        first_new = context - count
        first_key = self._first_key(first_new)
        first_block, last_block = first_key // block_size, (context - 1) // block_size
        blocks = batch.block_tables[s, first_block : last_block + 1].long()
        k, v = _gather_blocks(kv_cache, blocks[None], query.dtype)
        keep = slice(first_key - first_block * block_size, context - first_block * block_size)
        k, v = k[0, keep].transpose(0, 1), v[0, keep].transpose(0, 1)  # [Hkv, L, D]
        q = query.transpose(0, 1)  # [Hq, n, D]
        window = self.sliding_window
        causal = first_new == 0 and not (window and window < context)
        mask = None
        if not causal:
            positions = torch.arange(first_key, context, device=device)
            query_pos = torch.arange(first_new, context, device=device)[:, None]
            mask = positions[None, :] <= query_pos
            if window:
                mask &= query_pos - positions[None, :] < window
        return self._sdpa(q, k, v, mask, causal).transpose(0, 1)

    def _sdpa(self, q, k, v, mask, causal: bool):
        if self.groups == 1:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal, scale=self.scale
            )
        if _HAS_GQA:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal, scale=self.scale, enable_gqa=True
            )
        k = k.repeat_interleave(self.groups, dim=0)
        v = v.repeat_interleave(self.groups, dim=0)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, scale=self.scale
        )

    def _check(self, query: torch.Tensor, kv_cache: torch.Tensor, batch: ForwardBatch) -> None:
        check_query(NAME, query, self.num_heads, self.head_dim)
        check_kv_cache(NAME, kv_cache, batch.block_size, self.num_kv_heads, self.head_dim)
        if query.shape[0] != batch.num_tokens:
            raise ValueError(
                f"{NAME}: {query.shape[0]} query rows for a batch of {batch.num_tokens} new tokens"
            )


def _gather_blocks(
    kv_cache: torch.Tensor, blocks: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values ``[S, W * BS, Hkv, D]`` (new tensors) of the blocks ``[S, W]``."""
    seqs, width = blocks.shape
    _, _, block_size, kv_heads, head_dim = kv_cache.shape
    flat = blocks.reshape(-1)
    out = []
    for half in (kv_cache[0], kv_cache[1]):
        # on a 2-D view: torch's index_select copies whole rows then, ~4x faster than on 4-D
        rows = half.reshape(half.shape[0], -1).index_select(0, flat).to(dtype)
        out.append(rows.view(seqs, width * block_size, kv_heads, head_dim))
    return out[0], out[1]
