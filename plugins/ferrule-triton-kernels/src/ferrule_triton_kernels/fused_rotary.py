"""``triton-rotary``: rotary position embedding of queries and keys in one launch, in place.

One program per token: it reads the token's position, the ``cos``/``sin`` rows of the
layer's float32 caches (``[max_position, rotary_dim / 2]``), and rotates every query and
key head: ``(x1 * cos - x2 * sin, x2 * cos + x1 * sin)`` where ``(x1, x2)`` are the two
halves of the first ``rotary_dim`` features (neox style, transformers' ``rotate_half``) or
their even and odd features (GPT-J style). Features past ``rotary_dim`` are left as they
are. Arithmetic is float32, rounded once to the activation dtype (torch ops round after each
product). The query and key tensors are overwritten and returned.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate_heads(
    base_ptr,
    row_stride,
    token,
    n_heads,
    head_dim,
    half,
    cos,
    sin,
    NEOX: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    heads = tl.arange(0, BLOCK_H)[:, None]
    pairs = tl.arange(0, BLOCK_R)[None, :]
    mask = (heads < n_heads) & (pairs < half)
    row = base_ptr + token * row_stride + heads * head_dim
    if NEOX:
        first = row + pairs
        second = row + pairs + half
    else:
        first = row + 2 * pairs
        second = row + 2 * pairs + 1
    x1 = tl.load(first, mask=mask, other=0.0)
    x2 = tl.load(second, mask=mask, other=0.0)
    a = x1.to(tl.float32)
    b = x2.to(tl.float32)
    tl.store(first, (a * cos - b * sin).to(x1.dtype), mask=mask)
    tl.store(second, (b * cos + a * sin).to(x1.dtype), mask=mask)


@triton.jit(do_not_specialize_on_alignment=["pos_ptr"])  # a staging-buffer slice: alignment varies
def _rotary_kernel(
    q_ptr,
    k_ptr,
    pos_ptr,
    cos_ptr,
    sin_ptr,
    q_stride,
    k_stride,
    n_q_heads,
    n_k_heads,
    head_dim,
    half,
    NEOX: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    position = tl.load(pos_ptr + token).to(tl.int64)
    pairs = tl.arange(0, BLOCK_R)[None, :]
    cos = tl.load(cos_ptr + position * half + pairs, mask=pairs < half, other=0.0)
    sin = tl.load(sin_ptr + position * half + pairs, mask=pairs < half, other=0.0)
    _rotate_heads(
        q_ptr, q_stride, token, n_q_heads, head_dim, half, cos, sin, NEOX, BLOCK_H, BLOCK_R
    )
    _rotate_heads(
        k_ptr, k_stride, token, n_k_heads, head_dim, half, cos, sin, NEOX, BLOCK_H, BLOCK_R
    )


class TritonRotary:
    """The kernel object for one ``RotaryEmbedding`` layer."""

    def __init__(self, layer: torch.nn.Module):
        self.layer = layer

    def forward(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.layer
        head_dim = layer.head_dim
        tokens = query.shape[0]
        q = _rows(query, tokens)
        k = _rows(key, tokens)
        cos, sin = layer.cos_cache, layer.sin_cache
        if cos.dtype != torch.float32 or not cos.is_contiguous():
            cos, sin = cos.float().contiguous(), sin.float().contiguous()
        n_q, n_k = q.shape[1] // head_dim, k.shape[1] // head_dim
        half = layer.rotary_dim // 2
        if tokens:
            _rotary_kernel[(tokens,)](
                q,
                k,
                positions,
                cos,
                sin,
                q.stride(0),
                k.stride(0),
                n_q,
                n_k,
                head_dim,
                half,
                NEOX=bool(layer.is_neox_style),
                BLOCK_H=triton.next_power_of_2(max(n_q, n_k)),
                BLOCK_R=triton.next_power_of_2(half),
                num_warps=4,
            )
        return q.view(query.shape), k.view(key.shape)


def _rows(x: torch.Tensor, tokens: int) -> torch.Tensor:
    """``x`` as ``[tokens, heads * head_dim]`` rows with unit feature stride (a view when
    possible, so the rotation lands in ``x``)."""
    rows = x.reshape(tokens, -1)
    if rows.stride(-1) != 1 or (tokens > 1 and rows.stride(0) < rows.shape[1]):
        rows = rows.contiguous()
    return rows
