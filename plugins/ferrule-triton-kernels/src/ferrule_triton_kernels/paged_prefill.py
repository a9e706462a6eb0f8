"""Varlen flash attention over a flat batch of new tokens and the paged KV cache.

Sequence ``s`` brings ``n_s = query_start[s + 1] - query_start[s]`` new tokens, the last
``n_s`` of its ``seq_lens[s]`` positions: its new row ``i`` sits at position
``seq_lens[s] - n_s + i`` and sees the keys ``j <= p`` (and ``p - j < W`` with a sliding
window ``W``), whether those keys came with this step or were cached before it. Prefill,
chunked prefill, prefill after a cached prefix and single decode tokens all take this path.

**Programs.** One program per (q-block, KV head). A q-block is ``BLOCK_Q`` consecutive new
tokens of one sequence times the ``G = Hq / Hkv`` query heads that share the KV head, laid
out as ``BLOCK_M >= BLOCK_Q * G`` rows (row ``r``: token ``r // G``, head ``r % G``), so
each key and value tile is loaded once for the whole group and feeds two ``tl.dot`` of
``BLOCK_M`` rows. Sequence ``s`` owns the q-blocks ``B(s) .. B(s + 1) - 1`` with
``B(s) = query_start[s] // BLOCK_Q + s``: that range holds at least ``ceil(n_s / BLOCK_Q)``
blocks (``floor((a + n) / b) - floor(a / b) + 1 >= ceil(n / b)``), and the grid
``T // BLOCK_Q + S`` is ``B(S)``; a program finds its sequence by binary search over ``B``
and returns at once if its block lies past ``n_s``. The grid depends on shapes only, so
nothing is read back to the host (the tile sizes use the host's ``max_query_len``).

**Key loop.** The q-block's rows span positions ``p_min .. p_max``; it needs keys
``max(0, p_min - W + 1) .. p_max``. Tiles of ``BLOCK_N`` keys (aligned to ``BLOCK_N``) that
every row sees in full (``j <= p_min`` and ``p_max - j < W``) run without masks; the
tiles before them (window edge) and after them (the causal diagonal, the context end) run
masked. Online softmax in float32, see :mod:`.paged_tile`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ferrule_triton_kernels.paged_tile import M_INIT, attend_tile

LOG2E = 1.4426950408889634


# Batch-dependent integers are not specialized on (Triton would compile a variant for each
# value that is 1 or a multiple of 16), nor are the batch metadata's pointers, which are
# slices of the engine's staging buffers at batch-dependent offsets (Triton would compile one
# variant when they are 16-byte aligned and one when not): one compile serves every step.
@triton.jit(
    do_not_specialize=["num_seqs", "stride_table"],
    do_not_specialize_on_alignment=["query_start", "seq_lens", "block_tables"],
)
def _prefill_kernel(
    Q,
    K,
    V,
    Out,
    query_start,
    seq_lens,
    block_tables,
    num_seqs,
    qk_scale,
    window,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_block,
    stride_slot,
    stride_head,
    stride_table,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # the last q-blocks of a sequence see the most keys: launch them first (shorter tail)
    q_block = tl.num_programs(0) - 1 - tl.program_id(0)
    kv_head = tl.program_id(1)

    # the last sequence s with B(s) = query_start[s] // BLOCK_Q + s <= q_block
    lo = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        if tl.load(query_start + mid) // BLOCK_Q + mid <= q_block:
            lo = mid + 1
        else:
            hi = mid
    seq = lo - 1
    q_begin = tl.load(query_start + seq)
    q_len = tl.load(query_start + seq + 1) - q_begin
    local = q_block - (q_begin // BLOCK_Q + seq)
    if local * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens + seq)
    context = seq_len - q_len  # positions before the first new token

    rows = tl.arange(0, BLOCK_M)
    token = local * BLOCK_Q + rows // GROUP  # index among the sequence's new tokens
    head = kv_head * GROUP + rows % GROUP
    row_ok = (rows < BLOCK_Q * GROUP) & (token < q_len)
    pos = context + token
    dims = tl.arange(0, D_PAD)
    q_rows = (q_begin + token).to(tl.int64) * stride_qt + head * stride_qh
    q_ok = row_ok[:, None] & (dims[None, :] < HEAD_DIM)
    q = tl.load(Q + q_rows[:, None] + dims[None, :], mask=q_ok, other=0.0)

    p_min = context + local * BLOCK_Q
    p_max = tl.minimum(p_min + BLOCK_Q, seq_len) - 1
    key_hi = p_max + 1
    if USE_WINDOW:
        key_lo = tl.maximum(p_min - window + 1, 0)
        full_lo = tl.cdiv(tl.maximum(p_max - window + 1, 0), BLOCK_N) * BLOCK_N
    else:
        key_lo = 0
        full_lo = 0
    key_lo = key_lo // BLOCK_N * BLOCK_N
    full_hi = (p_min + 1) // BLOCK_N * BLOCK_N  # tiles below see every row in full
    mid_lo = tl.minimum(tl.maximum(full_lo, key_lo), key_hi)
    mid_hi = tl.minimum(tl.maximum(full_hi, mid_lo), key_hi)

    table_row = block_tables + seq.to(tl.int64) * stride_table
    kv_offset = kv_head * stride_head
    m_i = tl.full([BLOCK_M], M_INIT, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    for n0 in range(key_lo, mid_lo, BLOCK_N):
        acc, m_i, l_i = attend_tile(
            acc, m_i, l_i, q, pos, K, V, table_row, n0, seq_len, kv_offset, window,
            qk_scale, stride_block, stride_slot,
            True, USE_WINDOW, BLOCK_N, BLOCK_SIZE, HEAD_DIM, D_PAD, PRECISION,
        )  # fmt: skip
    for n0 in range(mid_lo, mid_hi, BLOCK_N):
        acc, m_i, l_i = attend_tile(
            acc, m_i, l_i, q, pos, K, V, table_row, n0, seq_len, kv_offset, window,
            qk_scale, stride_block, stride_slot,
            False, USE_WINDOW, BLOCK_N, BLOCK_SIZE, HEAD_DIM, D_PAD, PRECISION,
        )  # fmt: skip
    for n0 in range(mid_hi, key_hi, BLOCK_N):
        acc, m_i, l_i = attend_tile(
            acc, m_i, l_i, q, pos, K, V, table_row, n0, seq_len, kv_offset, window,
            qk_scale, stride_block, stride_slot,
            True, USE_WINDOW, BLOCK_N, BLOCK_SIZE, HEAD_DIM, D_PAD, PRECISION,
        )  # fmt: skip

    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    o_rows = (q_begin + token).to(tl.int64) * stride_ot + head * stride_oh
    tl.store(Out + o_rows[:, None] + dims[None, :], out.to(Out.dtype.element_ty), mask=q_ok)


def prefill_config(
    head_dim: int, group: int, max_query_len: int, on_gpu: bool
) -> tuple[int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` for a batch whose longest new-token run
    is ``max_query_len``: 128 query rows by 64 keys (64 by 32 for head_dim 256) on a GPU,
    fewer rows when the batch has fewer (short chunks, decode tokens in a mixed batch);
    small tiles in Triton's CPU interpreter, where each tile costs Python time."""
    d_pad = triton.next_power_of_2(head_dim)
    rows = triton.next_power_of_2(max(1, max_query_len) * group)
    if not on_gpu:
        block_m = min(max(rows, 16), max(32, triton.next_power_of_2(group)))
        return block_m, 16, 1, 1
    big_m, block_n = (64, 32) if d_pad > 128 else (128, 64)
    block_m = min(max(rows, 16), max(big_m, triton.next_power_of_2(group)))
    num_warps = 8 if block_m >= 128 or block_m * d_pad >= 128 * 128 else 4
    return block_m, block_n, num_warps, 3 if d_pad <= 128 else 2


def paged_prefill(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    query_start: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    *,
    scale: float,
    sliding_window: int | None,
    max_query_len: int,
    tiles: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Attention outputs ``[T, Hq, D]`` of ``query [T, Hq, D]`` over the caches
    ``[NB, BS, Hkv, D]`` (rows of ``D`` contiguous values). ``tiles`` fixes
    ``(BLOCK_M, BLOCK_N)`` (tests use it to force many tiles)."""
    tokens, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = key_cache.shape
    group = num_heads // num_kv_heads
    num_seqs = seq_lens.shape[0]
    out = torch.empty(tokens, num_heads, head_dim, dtype=query.dtype, device=query.device)
    if tokens == 0:
        return out
    block_m, block_n, num_warps, num_stages = prefill_config(
        head_dim, group, max_query_len, query.is_cuda
    )
    if tiles is not None:
        block_m, block_n = tiles
    block_q = block_m // group
    if block_q < 1:
        raise ValueError(f"paged_prefill: BLOCK_M={block_m} rows cannot hold {group} heads")
    grid = (tokens // block_q + num_seqs, num_kv_heads)
    _prefill_kernel[grid](
        query, key_cache, value_cache, out, query_start, seq_lens, block_tables,
        num_seqs, scale * LOG2E, sliding_window or 0,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2), block_tables.stride(0),
        GROUP=group, HEAD_DIM=head_dim, D_PAD=triton.next_power_of_2(head_dim),
        BLOCK_Q=block_q, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_SIZE=block_size,
        USE_WINDOW=sliding_window is not None,
        PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out
