"""Store the new tokens' keys and values into the paged KV cache, in one Triton launch.

The cache is ``[2, NB, BS, Hkv, D]``; slot ``t`` of ``slot_mapping`` (int64) is
``block * BS + offset``, so token ``t``'s key for head ``h`` goes to
``cache[0, block, offset, h, :]`` and its value to ``cache[1, ...]``. A slot of ``-1``
means "do not store" (a token whose key is already cached, graph padding): the program
masks its stores off instead of the host filtering the rows, so nothing syncs with the
device and the launch can be captured in a CUDA graph.

One program per token stores all ``Hkv x D`` values of its key and of its value (``D``
padded to a power of two with masks), converting to the cache dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit(
    do_not_specialize_on_alignment=["slot_mapping"]
)  # a staging-buffer slice: alignment varies
def _write_kv_kernel(
    key,
    value,
    key_cache,
    value_cache,
    slot_mapping,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_block,
    stride_slot,
    stride_head,
    NUM_KV_HEADS: tl.constexpr,
    H_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    token = tl.program_id(0)
    slot = tl.load(slot_mapping + token)
    heads = tl.arange(0, H_PAD)
    dims = tl.arange(0, D_PAD)
    ok = (heads[:, None] < NUM_KV_HEADS) & (dims[None, :] < HEAD_DIM)
    store_ok = ok & (slot >= 0)
    slot = tl.maximum(slot, 0)
    dst = (slot // BLOCK_SIZE) * stride_block + (slot % BLOCK_SIZE) * stride_slot
    dst = dst + heads[:, None] * stride_head + dims[None, :]
    row = token.to(tl.int64)
    k = tl.load(key + row * stride_kt + heads[:, None] * stride_kh + dims[None, :], mask=ok)
    tl.store(key_cache + dst, k.to(key_cache.dtype.element_ty), mask=store_ok)
    v = tl.load(value + row * stride_vt + heads[:, None] * stride_vh + dims[None, :], mask=ok)
    tl.store(value_cache + dst, v.to(value_cache.dtype.element_ty), mask=store_ok)


def write_kv(
    cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store ``key``/``value`` ``[T, Hkv, D]`` into ``cache [2, NB, BS, Hkv, D]`` at
    ``slot_mapping`` (int64 ``[T]``; ``-1`` skips the row)."""
    tokens, num_kv_heads, head_dim = key.shape
    if cache.dim() != 5 or tuple(cache.shape[3:]) != (num_kv_heads, head_dim):
        raise ValueError(
            f"write_kv: cache of shape {tuple(cache.shape)} does not hold keys of shape "
            f"{tuple(key.shape)}; expected [2, num_blocks, block_size, {num_kv_heads}, {head_dim}]"
        )
    if value.shape != key.shape or slot_mapping.shape != (tokens,):
        raise ValueError(
            f"write_kv: keys {tuple(key.shape)}, values {tuple(value.shape)} and "
            f"slot_mapping {tuple(slot_mapping.shape)} must be [T, Hkv, D], [T, Hkv, D], [T]"
        )
    if tokens == 0:
        return
    if key.stride(2) != 1:
        key = key.contiguous()
    if value.stride(2) != 1:
        value = value.contiguous()
    key_cache, value_cache = cache[0], cache[1]
    if key_cache.stride(3) != 1:
        raise ValueError("write_kv: the cache's head_dim axis must be contiguous")
    h_pad = triton.next_power_of_2(num_kv_heads)
    d_pad = triton.next_power_of_2(head_dim)
    _write_kv_kernel[(tokens,)](
        key, value, key_cache, value_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        NUM_KV_HEADS=num_kv_heads, H_PAD=h_pad, HEAD_DIM=head_dim, D_PAD=d_pad,
        BLOCK_SIZE=cache.shape[2],
        num_warps=max(1, min(8, h_pad * d_pad // 256)) if key.is_cuda else 1,
    )  # fmt: skip
