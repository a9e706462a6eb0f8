"""``triton-paged-attention``: attention over the paged KV cache in Triton.

The layer has written the new tokens' keys and values into the cache (through
:meth:`TritonPagedAttention.write_kv`, a Triton store that skips ``-1`` slots without a
host sync), so every key and value of a sequence, old and new, is read from the cache
``[2, NB, BS, Hkv, D]`` through the sequence's block table. A new token at position ``p``
sees the positions ``q <= p`` of its sequence, and with a sliding window ``W`` only those
with ``p - q < W``.

- Decode-only batches (one new token per sequence, row ``s`` = sequence ``s``) run the
  split-KV decode kernel (:mod:`.paged_decode`), whose launch depends on tensor shapes
  only: it can be captured in a CUDA graph and replayed with new lengths and block tables,
  and padding sequences with ``seq_lens[s] == 0`` produce zeros.
- Other batches (prefill, chunked prefill, prefill after a cached prefix, mixed with
  decode tokens) run the varlen flash-attention kernel (:mod:`.paged_prefill`).

Both keep one KV head's group of ``Hq / Hkv`` query heads in one program, so each key and
value is read once per group, and run the softmax online in float32. Head dims that are
not powers of two (80, 96) are padded to the next one inside the kernels with masks.
"""

from __future__ import annotations

import torch

from ferrule_core.forward_batch import ForwardBatch, check_kv_cache, check_query
from ferrule_triton_kernels.kv_write import write_kv
from ferrule_triton_kernels.paged_decode import paged_decode
from ferrule_triton_kernels.paged_prefill import paged_prefill

NAME = "triton-paged-attention"
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


class TritonPagedAttention:
    """The kernel object for one engine ``Attention`` layer.

    ``decode_splits`` (``None``: chosen from shapes and the GPU) and ``tiles``
    (``(BLOCK_M, BLOCK_N)`` of the prefill kernel, ``None``: chosen from the head size and
    the device) may be set to force a configuration; tests do.
    """

    name = NAME

    def __init__(self, layer):
        self.num_heads = layer.num_heads
        self.num_kv_heads = layer.num_kv_heads
        self.head_dim = layer.head_dim
        self.scale = layer.scale
        self.sliding_window = layer.sliding_window
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"{NAME}: num_heads={self.num_heads} is not a multiple of "
                f"num_kv_heads={self.num_kv_heads}"
            )
        if not 16 <= self.head_dim <= MAX_HEAD_DIM:
            raise ValueError(f"{NAME}: head_dim={self.head_dim} is outside 16..{MAX_HEAD_DIM}")
        self.decode_splits: int | None = None
        self.tiles: tuple[int, int] | None = None

    def forward(
        self, query: torch.Tensor, kv_cache: torch.Tensor, batch: ForwardBatch
    ) -> torch.Tensor:
        """``[T, Hq, D]`` outputs for the ``[T, Hq, D]`` queries of ``batch``'s new tokens."""
        self._check(query, kv_cache, batch)
        if query.stride(2) != 1:
            query = query.contiguous()
        key_cache, value_cache = kv_cache[0], kv_cache[1]
        if batch.decode_only and query.shape[0] == batch.seq_lens.shape[0]:
            return paged_decode(
                query,
                key_cache,
                value_cache,
                batch.seq_lens,
                batch.block_tables,
                scale=self.scale,
                sliding_window=self.sliding_window,
                num_splits=self.decode_splits,
                block_n=self.tiles[1] if self.tiles else None,
            )
        return paged_prefill(
            query,
            key_cache,
            value_cache,
            batch.query_start,
            batch.seq_lens,
            batch.block_tables,
            scale=self.scale,
            sliding_window=self.sliding_window,
            max_query_len=batch.max_query_len,
            tiles=self.tiles,
        )

    def write_kv(
        self,
        cache: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        """Store ``key``/``value`` ``[T, Hkv, D]`` at ``slot_mapping`` (``-1``: skip)."""
        write_kv(cache, key, value, slot_mapping)

    def _check(self, query: torch.Tensor, kv_cache: torch.Tensor, batch: ForwardBatch) -> None:
        check_query(NAME, query, self.num_heads, self.head_dim)
        check_kv_cache(NAME, kv_cache, batch.block_size, self.num_kv_heads, self.head_dim)
        if kv_cache.stride(4) != 1:
            raise ValueError(f"{NAME}: the KV cache's head_dim axis must be contiguous")
        if query.dtype not in DTYPES or kv_cache.dtype != query.dtype:
            raise ValueError(
                f"{NAME}: queries in {query.dtype} over a {kv_cache.dtype} cache; both must be "
                "one of float16, bfloat16, float32"
            )
        if query.dtype == torch.bfloat16 and not query.is_cuda:
            raise ValueError(
                f"{NAME}: Triton's CPU interpreter computes tl.dot on bfloat16 wrongly "
                "(Triton 3.6); run float32 or float16 there"
            )
        if batch.block_size & (batch.block_size - 1):
            raise ValueError(f"{NAME}: block_size={batch.block_size} is not a power of two")
        if query.shape[0] != batch.slot_mapping.shape[0]:
            raise ValueError(
                f"{NAME}: {query.shape[0]} query rows for a batch of "
                f"{batch.slot_mapping.shape[0]} new tokens"
            )
