"""``triton-paged-attention`` on a CUDA device at realistic sizes, in float16 and bfloat16.

The oracle is float64 attention over each sequence's unpaged keys and values (computed on
the GPU in chunks of query rows); the cache's blocks are shuffled and its unused slots hold
NaN. Sizes: 32 query heads over 8 KV heads of 128, contexts up to 4k, decode batches of 64,
and the other head dims, block sizes and head layouts at smaller contexts. The last tests
capture the decode path (with ``write_kv``) in a CUDA graph, with padding sequences of
length 0, and replay it with new lengths, block tables, queries and keys.
"""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch

from ferrule_core.forward_batch import ForwardBatch, build_forward_batch
from ferrule_triton_kernels.attention import TritonPagedAttention

pytestmark = pytest.mark.gpu
DEVICE = "cuda"
TOLERANCE = {torch.float16: 4e-3, torch.bfloat16: 2.5e-2}
DTYPES = list(TOLERANCE)
DTYPE_IDS = ["float16", "bfloat16"]


def _kernel(num_heads, num_kv_heads, head_dim, window, splits=None):
    layer = SimpleNamespace(
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        scale=head_dim**-0.5,
        sliding_window=window,
    )
    kernel = TritonPagedAttention(layer)
    kernel.decode_splits = splits
    return kernel


def _fill(cache, contexts, gen):
    """Page ``contexts[s]`` random keys and values per sequence into ``cache`` (reset to
    NaN) through a shuffled block order; return the block tables and the unpaged keys and
    values."""
    _, num_blocks, block_size, num_kv_heads, head_dim = cache.shape
    cache.fill_(math.nan)
    flat = cache.view(2, -1, num_kv_heads, head_dim)
    order = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()  # block 0 unused
    tables, keys, values = [], [], []
    for context in contexts:
        table = [order.pop() for _ in range(-(-context // block_size))]
        k = torch.randn(context, num_kv_heads, head_dim, generator=gen).to(DEVICE, cache.dtype)
        v = torch.randn(context, num_kv_heads, head_dim, generator=gen).to(DEVICE, cache.dtype)
        blocks = torch.tensor(table, dtype=torch.int64).repeat_interleave(block_size)[:context]
        slots = (blocks * block_size + torch.arange(context) % block_size).to(DEVICE)
        flat[0, slots], flat[1, slots] = k, v
        tables.append(table)
        keys.append(k)
        values.append(v)
    return tables, keys, values


def _case(seqs, num_heads, num_kv_heads, head_dim, block_size, dtype, seed=0):
    """A batch of ``seqs`` = [(context_len, query_len)] over a fresh shuffled cache."""
    gen = torch.Generator().manual_seed(seed)
    num_blocks = sum(-(-c // block_size) for c, _ in seqs) + 3
    shape = (2, num_blocks, block_size, num_kv_heads, head_dim)
    cache = torch.empty(shape, dtype=dtype, device=DEVICE)
    tables, keys, values = _fill(cache, [c for c, _ in seqs], gen)
    queries = [
        torch.randn(n, num_heads, head_dim, generator=gen).to(DEVICE, dtype) for _, n in seqs
    ]
    batch = build_forward_batch(
        tables, [n for _, n in seqs], [c for c, _ in seqs], block_size, device=DEVICE
    )
    return cache, batch, torch.cat(queries), (keys, values, queries)


def _naive(q, k, v, context, window, scale, chunk=256):
    """float64 attention of ``q [n, Hq, D]`` (the last n positions) over ``k, v [c, Hkv, D]``."""
    groups = q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(groups, dim=1)
    v = v.double().repeat_interleave(groups, dim=1)
    keys = torch.arange(context, device=q.device)[None, :]
    out = []
    for first in range(0, q.shape[0], chunk):
        rows = q[first : first + chunk].double()
        start = context - q.shape[0] + first
        pos = torch.arange(start, start + rows.shape[0], device=q.device)[:, None]
        seen = keys <= pos
        if window is not None:
            seen &= pos - keys < window
        scores = torch.einsum("nhd,chd->hnc", rows, k) * scale
        weights = torch.softmax(scores.masked_fill(~seen, -math.inf), dim=-1)
        out.append(torch.einsum("hnc,chd->nhd", weights, v))
    return torch.cat(out) if out else q.double()


def _expected(contexts, parts, window, scale):
    keys, values, queries = parts
    return torch.cat(
        [
            _naive(q, k, v, c, window, scale)
            for q, k, v, c in zip(queries, keys, values, contexts, strict=True)
        ]
    )


def _check(seqs, heads, head_dim, window, dtype, *, block_size=16, splits=None, seed=0):
    kernel = _kernel(*heads, head_dim, window, splits)
    cache, batch, query, parts = _case(seqs, *heads, head_dim, block_size, dtype, seed)
    out = kernel.forward(query, cache, batch)
    assert out.shape == query.shape and out.dtype == dtype
    expected = _expected([c for c, _ in seqs], parts, window, kernel.scale)
    error = (out.double() - expected).abs().max().item()
    assert error < TOLERANCE[dtype], f"max abs error {error}"


LLAMA = (32, 8)  # query heads, KV heads
MIXED = [(4096, 4096), (3000, 1000), (1500, 1), (777, 777), (2048, 0), (64, 1), (300, 37)]


def _decode_lengths(count, longest, seed):
    rng = random.Random(seed)
    return [(rng.randint(1, longest), 1) for _ in range(count)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("window", [None, 1024], ids=["no-window", "window-1024"])
def test_mixed_batch_up_to_4k(dtype, window):
    _check(MIXED, LLAMA, 128, window, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("window", [None, 1024], ids=["no-window", "window-1024"])
@pytest.mark.parametrize("splits", [None, 1, 7], ids=["auto-splits", "one-split", "7-splits"])
def test_decode_batch_of_64(dtype, window, splits):
    _check(_decode_lengths(64, 4096, seed=1), LLAMA, 128, window, dtype, splits=splits, seed=1)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_small_decode_batch_is_split(dtype):
    """Four sequences x 8 KV heads leave most SMs idle without splits."""
    _check([(4000, 1), (17, 1), (2500, 1), (1, 1)], LLAMA, 128, None, dtype, seed=2)


@pytest.mark.parametrize("head_dim", [64, 80, 96, 256])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_head_dims(head_dim, dtype):
    seqs = [(700, 700), (900, 150), (333, 1)]
    _check(seqs, (16, 4), head_dim, None, dtype, seed=3)
    _check(_decode_lengths(16, 1200, seed=3), (16, 4), head_dim, 500, dtype, seed=3)


@pytest.mark.parametrize("block_size", [1, 8, 32, 128])
def test_block_sizes(block_size):
    seqs = [(1000, 1000), (600, 90), (257, 1)]
    _check(seqs, LLAMA, 128, 300, torch.float16, block_size=block_size, seed=4)
    _check(_decode_lengths(16, 1000, seed=4), LLAMA, 128, None, torch.float16,
           block_size=block_size, seed=4)  # fmt: skip


@pytest.mark.parametrize("heads", [(8, 1), (8, 8), (28, 4)], ids=["mqa", "mha", "gqa-7"])
def test_head_layouts(heads):
    _check([(1500, 1500), (800, 100), (99, 1)], heads, 128, None, torch.bfloat16, seed=5)
    _check(_decode_lengths(64, 2000, seed=5), heads, 128, 256, torch.bfloat16, seed=5)


def test_write_kv_skips_minus_one():
    kernel = _kernel(*LLAMA, 128, None)
    cache = torch.full((2, 64, 16, 8, 128), math.nan, dtype=torch.bfloat16, device=DEVICE)
    qkv = torch.randn(300, (32 + 16) * 128, device=DEVICE, dtype=torch.bfloat16)
    key = qkv[:, 32 * 128 : 40 * 128].view(300, 8, 128)
    value = qkv[:, 40 * 128 :].view(300, 8, 128)
    slots = torch.randperm(64 * 16, device=DEVICE)[:300]
    slots[::7] = -1
    kernel.write_kv(cache, key, value, slots)
    flat = cache.view(2, -1, 8, 128)
    keep = slots >= 0
    assert torch.equal(flat[0, slots[keep]], key[keep])
    assert torch.equal(flat[1, slots[keep]], value[keep])
    untouched = torch.ones(64 * 16, dtype=torch.bool, device=DEVICE)
    untouched[slots[keep]] = False
    assert flat[:, untouched].isnan().all()


# --- CUDA graphs ----------------------------------------------------------------------


class _Static:
    """The tensors a captured decode step reads, refilled before each replay."""

    def __init__(self, num_seqs, width, heads, head_dim, dtype):
        num_heads, num_kv_heads = heads
        self.query = torch.zeros(num_seqs, num_heads, head_dim, dtype=dtype, device=DEVICE)
        self.key = torch.zeros(num_seqs, num_kv_heads, head_dim, dtype=dtype, device=DEVICE)
        self.value = torch.zeros_like(self.key)
        self.batch = ForwardBatch(
            query_start=torch.arange(num_seqs + 1, dtype=torch.int32, device=DEVICE),
            seq_lens=torch.zeros(num_seqs, dtype=torch.int32, device=DEVICE),
            block_tables=torch.zeros(num_seqs, width, dtype=torch.int32, device=DEVICE),
            slot_mapping=torch.full((num_seqs,), -1, dtype=torch.int64, device=DEVICE),
            logits_indices=torch.arange(num_seqs, dtype=torch.int64, device=DEVICE),
            block_size=16,
            query_lens=[1] * num_seqs,
            context_lens=[1] * num_seqs,  # host copies; the captured kernels never read them
        )

    def refill(self, cache, contexts, gen):
        """New sequences (context 0: padding) whose last key/value ``write_kv`` stores."""
        _, num_heads, head_dim = self.query.shape
        block_size = cache.shape[2]
        tables, keys, values = _fill(cache, contexts, gen)
        flat = cache.view(2, -1, *cache.shape[3:])
        self.batch.block_tables.zero_()
        self.batch.slot_mapping.fill_(-1)
        queries = []
        for s, (table, context) in enumerate(zip(tables, contexts, strict=True)):
            q = torch.randn(1, num_heads, head_dim, generator=gen).to(DEVICE, cache.dtype)
            self.query[s] = q[0]
            queries.append(q)
            if context == 0:
                continue
            last = context - 1
            slot = table[last // block_size] * block_size + last % block_size
            self.batch.block_tables[s, : len(table)] = torch.tensor(table, dtype=torch.int32)
            self.batch.slot_mapping[s] = slot
            self.key[s], self.value[s] = keys[s][last], values[s][last]
            flat[:, slot] = math.nan  # only the captured write_kv puts the new token back
        self.batch.seq_lens.copy_(torch.tensor(contexts, dtype=torch.int32))
        return keys, values, queries


@pytest.mark.parametrize("num_seqs", [6, 64], ids=["split", "unsplit"])
@pytest.mark.parametrize("window", [None, 700], ids=["no-window", "window-700"])
def test_decode_replays_in_a_cuda_graph(num_seqs, window):
    dtype, width, head_dim = torch.float16, 128, 128  # contexts up to 2048 tokens
    kernel = _kernel(*LLAMA, head_dim, window)
    gen = torch.Generator().manual_seed(6)
    cache = torch.empty(2, num_seqs * width + 1, 16, 8, head_dim, dtype=dtype, device=DEVICE)
    static = _Static(num_seqs, width, LLAMA, head_dim, dtype)

    def step():
        kernel.write_kv(cache, static.key, static.value, static.batch.slot_mapping)
        return kernel.forward(static.query, cache, static.batch)

    rng = random.Random(6)
    static.refill(cache, [rng.randint(1, 2048) for _ in range(num_seqs)], gen)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # compile and warm up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()

    for round_ in range(3):
        contexts = [rng.randint(1, 2048) for _ in range(num_seqs)]
        padding = list(range(round_ % 2, num_seqs, 3))
        for s in padding:
            contexts[s] = 0
        keys, values, queries = static.refill(cache, contexts, gen)
        out.fill_(math.nan)
        graph.replay()
        torch.cuda.synchronize()
        live = [s for s in range(num_seqs) if contexts[s]]
        expected = _expected(
            [contexts[s] for s in live],
            ([keys[s] for s in live], [values[s] for s in live], [queries[s] for s in live]),
            window,
            kernel.scale,
        )
        error = (out[live].double() - expected).abs().max().item()
        assert error < TOLERANCE[dtype], f"round {round_}: max abs error {error}"
        assert torch.equal(out[padding], torch.zeros_like(out[padding]))
