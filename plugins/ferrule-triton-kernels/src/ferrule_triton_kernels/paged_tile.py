"""One step of online softmax over a tile of ``BLOCK_N`` keys read through a block table.

Both attention programs (:mod:`.paged_prefill`, :mod:`.paged_decode`) hold ``BLOCK_M``
query rows of one KV head's group of query heads: ``q [BLOCK_M, D_PAD]`` in the cache
dtype, and per row its position ``pos`` in the sequence. A tile covers keys
``n0 .. n0 + BLOCK_N - 1`` of one sequence; key ``j`` lives in cache block
``table_row[j // BLOCK_SIZE]`` at offset ``j % BLOCK_SIZE``, so its head-``h`` row starts at
``block * stride_block + offset * stride_slot + h * stride_head`` (``kv_offset`` is the
``h`` term) and its ``HEAD_DIM`` values are contiguous. ``BLOCK_N`` is a multiple of
``BLOCK_SIZE`` or divides it, so a tile covers whole blocks or a part of one.

Scores are ``s = q · k * scale`` kept in base 2: ``qk_scale = scale * log2(e)`` so that
``exp2(s - m)`` is ``exp(q·k*scale - m')``. Running per row: the maximum ``m``, the
denominator ``l = Σ exp2(s - m)`` and ``acc = Σ exp2(s - m) v`` (float32). A new tile with
maximum ``m' = max(m, max s)`` rescales the old sums by ``exp2(m - m')``. ``m`` starts at
``-1e30`` rather than ``-inf``: a row whose keys are all masked (a padding row, an empty
split) then keeps ``m`` finite, its ``exp2(-inf - m)`` terms are 0 and ``l`` stays 0,
with no ``inf - inf`` NaN; callers turn ``l == 0`` into a zero output.

``MASKED`` tiles load keys and values only below ``key_end`` (slots past a context may hold
anything, even NaN, which a mask on the scores alone would not hide) and allow key ``j``
for a row at ``pos`` iff ``j < key_end``, ``j <= pos`` and, with a window ``W``,
``pos - j < W``. Unmasked tiles are the interior ones every row sees in full.
"""

from __future__ import annotations

import triton
import triton.language as tl

M_INIT = tl.constexpr(-1.0e30)  # the running maximum before any key: finite, so no inf - inf


@triton.jit
def attend_tile(
    acc,
    m_i,
    l_i,
    q,
    pos,
    K,
    V,
    table_row,
    n0,
    key_end,
    kv_offset,
    window,
    qk_scale,
    stride_block,
    stride_slot,
    MASKED: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
    PRECISION: tl.constexpr,
):
    keys = n0 + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, D_PAD)
    if MASKED:
        key_ok = keys < key_end
        block = tl.load(table_row + keys // BLOCK_SIZE, mask=key_ok, other=0)
    else:
        block = tl.load(table_row + keys // BLOCK_SIZE)
    rows = block.to(tl.int64) * stride_block + (keys % BLOCK_SIZE) * stride_slot + kv_offset
    offsets = rows[:, None] + dims[None, :]
    if MASKED:
        if D_PAD == HEAD_DIM:
            load_ok = key_ok[:, None]
        else:
            load_ok = key_ok[:, None] & (dims[None, :] < HEAD_DIM)
        k = tl.load(K + offsets, mask=load_ok, other=0.0)
    elif D_PAD == HEAD_DIM:
        k = tl.load(K + offsets)
    else:
        k = tl.load(K + offsets, mask=dims[None, :] < HEAD_DIM, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    if MASKED:
        visible = key_ok[None, :] & (keys[None, :] <= pos[:, None])
        if USE_WINDOW:
            visible = visible & (pos[:, None] - keys[None, :] < window)
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if MASKED:
        v = tl.load(V + offsets, mask=load_ok, other=0.0)
    elif D_PAD == HEAD_DIM:
        v = tl.load(V + offsets)
    else:
        v = tl.load(V + offsets, mask=dims[None, :] < HEAD_DIM, other=0.0)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
    return acc, m_new, l_i
