"""Split-KV flash decoding: one new token per sequence, over the paged KV cache.

Row ``s`` of the queries is sequence ``s``'s token at position ``p = seq_lens[s] - 1``; it
sees keys ``lo .. p`` with ``lo = max(0, p - W + 1)`` under a sliding window ``W`` (else 0).

**Programs.** Grid ``(S, Hkv, NUM_SPLITS)``. Program ``(s, h, j)`` holds the ``G = Hq / Hkv``
query heads of KV head ``h`` as the first ``G`` of ``G_PAD >= 16`` rows (the smallest
``tl.dot``), so each key and value is read from the cache once per KV head, in rows of
``HEAD_DIM`` contiguous values (16-byte vector loads). The keys ``lo .. p`` (``lo`` rounded
down to ``BLOCK_N``) are cut into ``NUM_SPLITS`` equal runs of whole ``BLOCK_N`` tiles,
computed on the device from ``seq_lens[s]``: every split of a long sequence gets work, the
runs past a short one are empty, and a sequence with ``seq_lens[s] == 0`` (CUDA-graph
padding) has only empty runs and gets a zero output.

With one split the program writes the normalised output. With more, each writes its
normalised partial output ``o_j`` and its log-sum-exp ``L_j = m_j + log2(l_j)`` (base 2,
``-inf`` for an empty run) in float32, and :func:`_combine_kernel` (grid ``(S, Hq)``) forms
``Σ_j 2^(L_j - L) o_j / Σ_j 2^(L_j - L)`` with ``L = max_j L_j``.

**CUDA graphs.** The grid and every constexpr come from tensor shapes and the layer
(``S`` from ``seq_lens``, the split count from ``S * Hkv``, the GPU's SM count and the
block-table width), never from host copies of lengths or values read back from the
device, so a captured launch replays correctly for any new ``seq_lens`` and block tables
of the same shapes. The partial buffers are allocated by torch's caching allocator (the
graph's private pool during capture).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ferrule_triton_kernels.paged_tile import M_INIT, attend_tile

LOG2E = 1.4426950408889634
MAX_SPLITS = 32
PROGRAMS_PER_SM = 2  # split until (S * Hkv * splits) reaches this many programs per SM


# The block table's width varies by step, and the metadata are slices of staging buffers at
# batch-dependent offsets: no variant per value or per pointer alignment.
@triton.jit(
    do_not_specialize=["stride_table"],
    do_not_specialize_on_alignment=["seq_lens", "block_tables"],
)
def _decode_kernel(
    Q,
    K,
    V,
    Out,
    PartOut,
    PartLse,
    seq_lens,
    block_tables,
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
    G_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens + seq)

    if USE_WINDOW:
        key_lo = tl.maximum(seq_len - window, 0) // BLOCK_N * BLOCK_N
    else:
        key_lo = 0
    per_split = tl.cdiv(tl.cdiv(tl.maximum(seq_len - key_lo, 0), NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = key_lo + split * per_split
    end = tl.minimum(start + per_split, seq_len)

    rows = tl.arange(0, G_PAD)
    head = kv_head * GROUP + rows
    dims = tl.arange(0, D_PAD)
    row_ok = rows < GROUP
    q_ok = row_ok[:, None] & (dims[None, :] < HEAD_DIM)
    q_rows = seq.to(tl.int64) * stride_qt + head * stride_qh
    q = tl.load(Q + q_rows[:, None] + dims[None, :], mask=q_ok, other=0.0)
    pos = tl.zeros([G_PAD], tl.int32) + seq_len - 1

    table_row = block_tables + seq.to(tl.int64) * stride_table
    m_i = tl.full([G_PAD], M_INIT, tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D_PAD], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        acc, m_i, l_i = attend_tile(
            acc, m_i, l_i, q, pos, K, V, table_row, n0, end, kv_head * stride_head, window,
            qk_scale, stride_block, stride_slot,
            True, USE_WINDOW, BLOCK_N, BLOCK_SIZE, HEAD_DIM, D_PAD, PRECISION,
        )  # fmt: skip

    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    if NUM_SPLITS == 1:
        o_rows = seq.to(tl.int64) * stride_ot + head * stride_oh
        tl.store(Out + o_rows[:, None] + dims[None, :], out.to(Out.dtype.element_ty), mask=q_ok)
    else:
        part = (seq.to(tl.int64) * (GROUP * tl.num_programs(1)) + head) * NUM_SPLITS + split
        tl.store(PartOut + part[:, None] * D_PAD + dims[None, :], out, mask=row_ok[:, None])
        lse = m_i + tl.log2(tl.where(l_i > 0.0, l_i, 1.0))
        tl.store(PartLse + part, tl.where(l_i > 0.0, lse, float("-inf")), mask=row_ok)


@triton.jit
def _combine_kernel(
    Out,
    PartOut,
    PartLse,
    stride_ot,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    splits = tl.arange(0, SPLITS_PAD)
    dims = tl.arange(0, D_PAD)
    part = (seq.to(tl.int64) * tl.num_programs(1) + head) * NUM_SPLITS + splits
    lse = tl.load(PartLse + part, mask=splits < NUM_SPLITS, other=float("-inf"))
    top = tl.max(lse, 0)
    weight = tl.where(
        lse > float("-inf"), tl.exp2(lse - tl.where(top > float("-inf"), top, 0.0)), 0.0
    )
    parts = tl.load(
        PartOut + part[:, None] * D_PAD + dims[None, :],
        mask=(splits < NUM_SPLITS)[:, None],
        other=0.0,
    )
    total = tl.sum(weight, 0)
    out = tl.sum(weight[:, None] * parts, 0) / tl.where(total > 0.0, total, 1.0)
    o_row = seq.to(tl.int64) * stride_ot + head * stride_oh
    tl.store(Out + o_row + dims, out.to(Out.dtype.element_ty), mask=dims < HEAD_DIM)


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def decode_block_n(head_dim: int, on_gpu: bool) -> int:
    """Keys per tile: 64 (32 for head_dim 256) on a GPU, 16 in the CPU interpreter."""
    if not on_gpu:
        return 16
    return 32 if triton.next_power_of_2(head_dim) > 128 else 64


def decode_splits(
    num_seqs: int, num_kv_heads: int, max_keys: int, block_n: int, device: torch.device
) -> int:
    """How many splits the keys of each (sequence, KV head) are cut into: enough that the
    GPU has ``PROGRAMS_PER_SM`` programs per SM, at most one per ``block_n``-key tile of
    the widest context the block tables can address (``max_keys``), at most ``MAX_SPLITS``.
    Shapes and the device only, so the value is the same at CUDA-graph capture and replay."""
    if device.type != "cuda":
        return 1
    programs = num_seqs * num_kv_heads
    target = PROGRAMS_PER_SM * _sm_count(device.index if device.index is not None else 0)
    if programs >= target:
        return 1
    return max(1, min(-(-target // programs), -(-max_keys // block_n), MAX_SPLITS))


def paged_decode(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    *,
    scale: float,
    sliding_window: int | None,
    num_splits: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Outputs ``[S, Hq, D]`` of the decode queries ``[S, Hq, D]`` (row ``s`` belongs to
    sequence ``s``) over the caches ``[NB, BS, Hkv, D]``. ``num_splits`` and ``block_n``
    override the shape-derived choices (tests use them)."""
    num_seqs, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = key_cache.shape
    group = num_heads // num_kv_heads
    d_pad = triton.next_power_of_2(head_dim)
    out = torch.empty(num_seqs, num_heads, head_dim, dtype=query.dtype, device=query.device)
    if num_seqs == 0:
        return out
    block_n = block_n or decode_block_n(head_dim, query.is_cuda)
    if num_splits is None:
        max_keys = block_tables.shape[1] * block_size
        num_splits = decode_splits(num_seqs, num_kv_heads, max_keys, block_n, query.device)
    if num_splits > 1:
        part_out = torch.empty(
            num_seqs, num_heads, num_splits, d_pad, dtype=torch.float32, device=query.device
        )
        part_lse = torch.empty(
            num_seqs, num_heads, num_splits, dtype=torch.float32, device=query.device
        )
    else:
        part_out = part_lse = out  # not touched with one split
    on_gpu = query.is_cuda
    _decode_kernel[(num_seqs, num_kv_heads, num_splits)](
        query, key_cache, value_cache, out, part_out, part_lse, seq_lens, block_tables,
        scale * LOG2E, sliding_window or 0,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2), block_tables.stride(0),
        GROUP=group, G_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        D_PAD=d_pad, BLOCK_N=block_n, BLOCK_SIZE=block_size, NUM_SPLITS=num_splits,
        USE_WINDOW=sliding_window is not None,
        PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        num_warps=4 if on_gpu else 1, num_stages=3 if on_gpu else 1,
    )  # fmt: skip
    if num_splits > 1:
        _combine_kernel[(num_seqs, num_heads)](
            out, part_out, part_lse, out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, D_PAD=d_pad, NUM_SPLITS=num_splits,
            SPLITS_PAD=triton.next_power_of_2(num_splits),
            num_warps=4 if on_gpu else 1,
        )  # fmt: skip
    return out
