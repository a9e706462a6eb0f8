"""``triton-paged-attention`` in Triton's CPU interpreter, against float64 naive attention.

Each case scatters several sequences' keys and values into a cache whose blocks are
shuffled (slots no sequence wrote hold NaN, as stale cache memory may), gives each sequence
a cached prefix and some new tokens (a whole prompt, a chunk after a prefix, one decode
token, none), and compares every new token's output with a float64 softmax over that
sequence's own unpaged keys, masked causally and by the sliding window (a token at ``p``
sees ``q`` with ``q <= p`` and ``p - q < W``). Shapes are small and tiles are 16 keys, so
that every case crosses several tiles, q-blocks and splits in a few seconds. The
interpreter runs float32 and float16; its ``tl.dot`` on bfloat16 is wrong (Triton 3.6), so
bfloat16 runs in the GPU tests only.
"""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import pytest
import torch

from ferrule_core.forward_batch import build_forward_batch
from ferrule_triton_kernels.attention import TritonPagedAttention

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="runs CPU tensors in Triton's interpreter (TRITON_INTERPRET=1, set without CUDA)",
)


def _kernel(num_heads, num_kv_heads, head_dim, window, splits=None, tiles=None):
    layer = SimpleNamespace(
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        scale=head_dim**-0.5,
        sliding_window=window,
    )
    kernel = TritonPagedAttention(layer)
    kernel.decode_splits, kernel.tiles = splits, tiles
    return kernel


def _case(seqs, num_heads, num_kv_heads, head_dim, block_size, dtype=torch.float32, seed=0):
    """Random keys/values/queries for ``seqs`` = [(context_len, query_len)], paged at random."""
    gen = torch.Generator().manual_seed(seed)
    needed = [-(-c // block_size) for c, _ in seqs]
    num_blocks = sum(needed) + 3
    order = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()  # block 0 unused
    shape = (2, num_blocks, block_size, num_kv_heads, head_dim)
    cache = torch.full(shape, math.nan, dtype=dtype)
    flat = cache.view(2, -1, num_kv_heads, head_dim)
    tables, keys, values, queries = [], [], [], []
    for (context, count), blocks in zip(seqs, needed, strict=True):
        table = [order.pop() for _ in range(blocks)]
        k = torch.randn(context, num_kv_heads, head_dim, generator=gen).to(dtype)
        v = torch.randn(context, num_kv_heads, head_dim, generator=gen).to(dtype)
        slots = [table[p // block_size] * block_size + p % block_size for p in range(context)]
        flat[0, slots], flat[1, slots] = k, v
        tables.append(table)
        keys.append(k)
        values.append(v)
        queries.append(torch.randn(count, num_heads, head_dim, generator=gen).to(dtype))
    batch = build_forward_batch(tables, [n for _, n in seqs], [c for c, _ in seqs], block_size)
    return cache, batch, torch.cat(queries), (keys, values, queries)


def _naive(q, k, v, context, window, scale):
    """float64 attention of ``q [n, Hq, D]`` (the last n positions) over ``k, v [c, Hkv, D]``."""
    groups = q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(groups, dim=1)
    v = v.double().repeat_interleave(groups, dim=1)
    pos = torch.arange(context - q.shape[0], context)[:, None]
    keys = torch.arange(context)[None, :]
    seen = keys <= pos
    if window is not None:
        seen &= pos - keys < window
    scores = torch.einsum("nhd,chd->hnc", q.double(), k) * scale
    weights = torch.softmax(scores.masked_fill(~seen, -math.inf), dim=-1)
    return torch.einsum("hnc,chd->nhd", weights, v)


def _expected(seqs, parts, window, scale):
    keys, values, queries = parts
    return torch.cat(
        [
            _naive(q, k, v, c, window, scale)
            for q, k, v, (c, _) in zip(queries, keys, values, seqs, strict=True)
        ]
    )


def _check(seqs, heads, window, *, head_dim=16, block_size=4, dtype=torch.float32, tol=1e-5,
           splits=None, tiles=None, seed=0):  # fmt: skip
    kernel = _kernel(*heads, head_dim, window, splits, tiles)
    cache, batch, query, parts = _case(seqs, *heads, head_dim, block_size, dtype, seed)
    out = kernel.forward(query, cache, batch)
    assert out.shape == query.shape and out.dtype == dtype
    error = (out.double() - _expected(seqs, parts, window, kernel.scale)).abs().max().item()
    assert error < tol, f"max abs error {error}"


MIXED = [(37, 37), (50, 13), (21, 1), (9, 2), (1, 1), (30, 0), (16, 16), (6, 3)]
HEADS = {"gqa-4to1": (8, 2), "mqa": (4, 1), "mha": (2, 2)}
WINDOWS = {"no-window": None, "window-5": 5, "window-1": 1}
DECODE = [(c, 1) for c in (3, 40, 17, 8, 1, 25, 64)]


@pytest.mark.parametrize("heads", list(HEADS.values()), ids=list(HEADS))
@pytest.mark.parametrize("window", list(WINDOWS.values()), ids=list(WINDOWS))
def test_mixed_batch_matches_naive_attention(heads, window):
    _check(MIXED, heads, window)


@pytest.mark.parametrize("window", [None, 7])
@pytest.mark.parametrize("splits", [1, 3, 8])
def test_decode_batch_of_different_lengths(window, splits):
    """Splits past a short context are empty; the combination must ignore them."""
    _check(DECODE, (8, 2), window, splits=splits, seed=1)


@pytest.mark.parametrize("splits", [1, 4])
def test_decode_rows_with_no_context_are_zero(splits):
    """CUDA-graph padding: a sequence whose device length is 0 reads nothing, writes 0."""
    kernel = _kernel(8, 2, 16, None, splits)
    seqs = [(12, 1), (5, 1), (30, 1)]
    cache, batch, query, parts = _case(seqs, 8, 2, 16, 4, seed=2)
    batch.seq_lens[1] = 0
    out = kernel.forward(query, cache, batch)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    expected = _expected(seqs, parts, None, kernel.scale)
    keep = [0, 2]
    assert (out[keep].double() - expected[keep]).abs().max().item() < 1e-5


@pytest.mark.parametrize("block_size", [1, 4, 16, 32])
def test_block_sizes(block_size):
    """Tiles of 16 keys cover several blocks of 1 or 4, one of 16, half of one of 32."""
    _check([(45, 45), (70, 9), (33, 1)], (4, 2), 20, block_size=block_size, seed=3)
    _check(DECODE, (4, 2), None, block_size=block_size, splits=2, seed=3)


def test_head_dim_80_is_padded_to_128():
    _check(MIXED[:4], (4, 2), None, head_dim=80, seed=4)
    _check(DECODE[:3], (4, 2), 9, head_dim=80, splits=2, seed=4)


def test_groups_of_three_query_heads():
    """G = 3 does not divide the 32 rows of a q-block: 10 tokens x 3 heads, 2 rows idle."""
    _check(MIXED, (6, 2), 5, seed=8)
    _check(DECODE, (6, 2), None, splits=2, seed=8)


def test_long_prefix_under_a_window_runs_unmasked_middle_tiles():
    """A chunk of 40 after 160 cached tokens, window 100, 16-row q-blocks: each q-block has
    masked tiles at the window edge, unmasked ones in the middle, masked ones at the end."""
    _check([(200, 40), (90, 90)], (4, 1), 100, tiles=(16, 16), seed=5)
    _check([(200, 40), (90, 90)], (4, 1), None, tiles=(64, 32), seed=5)


def test_float16():
    _check(MIXED, (8, 2), 6, dtype=torch.float16, tol=4e-3, seed=6)
    _check(DECODE, (8, 2), None, dtype=torch.float16, tol=4e-3, splits=3, seed=6)


def test_write_kv_skips_minus_one_and_converts_dtype():
    kernel = TritonPagedAttention(SimpleNamespace(num_heads=6, num_kv_heads=3, head_dim=80,
                                                  scale=0.1, sliding_window=None))  # fmt: skip
    cache = torch.full((2, 5, 4, 3, 80), math.nan, dtype=torch.float16)
    qkv = torch.randn(6, (6 + 3 + 3) * 80)  # a fused projection: keys/values are strided views
    key = qkv[:, 6 * 80 : 9 * 80].view(6, 3, 80)
    value = qkv[:, 9 * 80 :].view(6, 3, 80)
    slots = torch.tensor([7, -1, 0, 19, -1, 12])
    kernel.write_kv(cache, key, value, slots)
    flat = cache.view(2, 20, 3, 80)
    written = slots[slots >= 0]
    assert torch.equal(flat[0, written], key[slots >= 0].half())
    assert torch.equal(flat[1, written], value[slots >= 0].half())
    untouched = [s for s in range(20) if s not in written.tolist()]
    assert flat[:, untouched].isnan().all()


def test_write_kv_then_forward_like_the_layer():
    """The layer's order: store the new tokens' keys and values, then attend."""
    kernel = _kernel(4, 2, 16, None)
    seqs = [(20, 20), (11, 3)]
    cache, batch, query, (keys, values, queries) = _case(seqs, 4, 2, 16, 4, seed=7)
    new_k = torch.cat([k[c - n :] for k, (c, n) in zip(keys, seqs, strict=True)])
    new_v = torch.cat([v[c - n :] for v, (c, n) in zip(values, seqs, strict=True)])
    flat = cache.view(2, -1, 2, 16)
    flat[:, batch.slot_mapping] = math.nan  # only write_kv puts them back
    kernel.write_kv(cache, new_k, new_v, batch.slot_mapping)
    out = kernel.forward(query, cache, batch)
    expected = _expected(seqs, (keys, values, queries), None, kernel.scale)
    assert (out.double() - expected).abs().max().item() < 1e-5


def test_empty_batch():
    kernel = _kernel(4, 2, 16, None)
    cache, batch, query, _ = _case([(5, 0)], 4, 2, 16, 4)
    assert kernel.forward(query, cache, batch).shape == (0, 4, 16)


def test_shape_mismatches_are_named():
    kernel = _kernel(4, 2, 16, None)
    cache, batch, query, _ = _case([(5, 5)], 4, 2, 16, 4)
    with pytest.raises(ValueError, match=r"expected \[T, 4, 16\]"):
        kernel.forward(query.reshape(5, 2, 32), cache, batch)
    with pytest.raises(ValueError, match="KV cache of shape"):
        kernel.forward(query, cache[:, :, :, :1], batch)
    with pytest.raises(ValueError, match="4 query rows for a batch of 5"):
        kernel.forward(query[:4], cache, batch)
    with pytest.raises(ValueError, match="both must be"):
        kernel.forward(query.half(), cache, batch)
    with pytest.raises(ValueError, match=r"interpreter computes tl\.dot on bfloat16"):
        kernel.forward(query.bfloat16(), cache.bfloat16(), batch)
