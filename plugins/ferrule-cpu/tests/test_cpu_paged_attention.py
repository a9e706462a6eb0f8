"""``torch-paged-attention`` against a naive float64 attention over the unpaged keys/values.

Each case scatters several sequences' keys and values into a cache whose blocks are
shuffled, gives each sequence a cached prefix and some new tokens (a whole prompt, a chunk
after a prefix, one decode token, none), and compares every new token's output with a
per-token softmax in float64 over that sequence's own keys, masked causally and by the
sliding window (a token at ``p`` sees ``q`` with ``q <= p`` and ``p - q < W``). Slots no
sequence wrote hold NaN, as stale or uninitialised cache memory may.
"""

import math
from types import SimpleNamespace

import pytest
import torch

from ferrule_core import KernelRequest, load_plugins
from ferrule_core.forward_batch import build_forward_batch
from ferrule_cpu import attention
from ferrule_cpu.attention import TorchPagedAttention

BLOCK_SIZE = 4
HEAD_DIM = 16


def _layer(num_heads, num_kv_heads, window):
    return SimpleNamespace(
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=HEAD_DIM,
        scale=HEAD_DIM**-0.5,
        sliding_window=window,
    )


def _case(seqs, num_heads, num_kv_heads, seed=0, dtype=torch.float32):
    """Random keys/values/queries for ``seqs`` = [(context_len, query_len)], paged at random."""
    gen = torch.Generator().manual_seed(seed)
    needed = [-(-c // BLOCK_SIZE) for c, _ in seqs]
    num_blocks = sum(needed) + 5
    order = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()  # block 0 unused
    # unused slots hold NaN: a kernel whose output depends on one (even masked) fails
    cache = torch.full((2, num_blocks, BLOCK_SIZE, num_kv_heads, HEAD_DIM), math.nan, dtype=dtype)
    flat = cache.view(2, -1, num_kv_heads, HEAD_DIM)
    tables, keys, values, queries = [], [], [], []
    for (context, count), blocks in zip(seqs, needed, strict=True):
        table = [order.pop() for _ in range(blocks)]
        k = torch.randn(context, num_kv_heads, HEAD_DIM, generator=gen).to(dtype)
        v = torch.randn(context, num_kv_heads, HEAD_DIM, generator=gen).to(dtype)
        slots = torch.tensor(
            [table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in range(context)]
        )
        flat[0, slots], flat[1, slots] = k, v
        tables.append(table)
        keys.append(k)
        values.append(v)
        queries.append(torch.randn(count, num_heads, HEAD_DIM, generator=gen).to(dtype))
    batch = build_forward_batch(tables, [n for _, n in seqs], [c for c, _ in seqs], BLOCK_SIZE)
    return cache, batch, torch.cat(queries), keys, values, queries


def _naive(q, k, v, context, window, scale):
    """float64 attention of ``q [n, Hq, D]`` (the last n positions) over ``k, v [c, Hkv, D]``."""
    count, num_heads, _ = q.shape
    groups = num_heads // k.shape[1]
    out = torch.empty(count, num_heads, HEAD_DIM, dtype=torch.float64)
    for i in range(count):
        p = context - count + i
        seen = [j for j in range(context) if j <= p and (window is None or p - j < window)]
        for h in range(num_heads):
            kh = k[seen, h // groups].double()
            scores = (kh @ q[i, h].double()) * scale
            weights = torch.softmax(scores, dim=0)
            out[i, h] = weights @ v[seen, h // groups].double()
    return out


def _check(seqs, num_heads, num_kv_heads, window, seed=0, dtype=torch.float32, tol=1e-5):
    layer = _layer(num_heads, num_kv_heads, window)
    cache, batch, query, keys, values, queries = _case(seqs, num_heads, num_kv_heads, seed, dtype)
    out = TorchPagedAttention(layer).forward(query, cache, batch)
    assert out.shape == query.shape and out.dtype == dtype
    expected = torch.cat(
        [
            _naive(q, k, v, c, window, layer.scale)
            for q, k, v, (c, _) in zip(queries, keys, values, seqs, strict=True)
        ]
    )
    error = (out.double() - expected).abs().max().item()
    assert error < tol, f"max abs error {error}"


MIXED = [(37, 37), (50, 13), (21, 1), (64, 1), (9, 2), (1, 1), (30, 0), (16, 16), (6, 3)]
HEADS = {"gqa-4to1": (8, 2), "mqa": (4, 1), "mha": (4, 4)}
WINDOWS = {"no-window": None, "window-5": 5, "window-1": 1, "window-larger": 100}


@pytest.mark.parametrize("heads", list(HEADS.values()), ids=list(HEADS))
@pytest.mark.parametrize("window", list(WINDOWS.values()), ids=list(WINDOWS))
def test_mixed_batch_matches_naive_attention(heads, window):
    _check(MIXED, *heads, window)


@pytest.mark.parametrize("window", [None, 7])
def test_decode_batch_of_different_lengths(window):
    _check([(c, 1) for c in (3, 40, 17, 8, 1, 25)], 8, 2, window, seed=1)


@pytest.mark.parametrize("budget", [1, 8 * 2 * BLOCK_SIZE * 2 * HEAD_DIM * 4])
def test_decode_split_into_gather_groups(monkeypatch, budget):
    """Small budgets: one SDPA call per sequence, or groups of similar lengths."""
    monkeypatch.setattr(attention, "GATHER_BUDGET", budget)
    _check([(c, 1) for c in (3, 40, 17, 8, 1, 25, 9, 30)] + [(12, 5)], 8, 2, 6, seed=5)


def test_decode_batch_of_equal_lengths():
    _check([(12, 1)] * 5, 8, 2, None, seed=2)


def test_window_equal_to_a_whole_prompt_is_plain_causal():
    _check([(12, 12), (13, 13)], 4, 1, 12, seed=3)


def test_bfloat16_queries_and_cache():
    _check(MIXED[:5], 8, 2, 6, seed=4, dtype=torch.bfloat16, tol=5e-2)


def test_empty_batch():
    layer = _layer(4, 2, None)
    cache, batch, query, *_ = _case([(5, 0)], 4, 2)
    assert TorchPagedAttention(layer).forward(query, cache, batch).shape == (0, 4, HEAD_DIM)


def test_shape_mismatches_are_named():
    layer = _layer(4, 2, None)
    cache, batch, query, *_ = _case([(5, 5)], 4, 2)
    kernel = TorchPagedAttention(layer)
    with pytest.raises(ValueError, match=r"expected \[T, 4, 16\]"):
        kernel.forward(query.reshape(5, 2, 32), cache, batch)
    with pytest.raises(ValueError, match="KV cache of shape"):
        kernel.forward(query, cache[:, :, :, :1], batch)
    with pytest.raises(ValueError, match="4 query rows for a batch of 5"):
        kernel.forward(query[:4], cache, batch)


def test_selected_for_cpu_attention_with_and_without_window():
    registry = load_plugins()
    for window in (None, 4096):
        request = KernelRequest.attention("cpu", "bfloat16", 128, sliding_window=window)
        assert registry.select_kernel("attention", request).name == "torch-paged-attention"
    reasons = registry.kernel_reasons("attention", KernelRequest.attention("cuda", "float16", 64))
    assert "runs on cpu, not cuda" in reasons["torch-paged-attention"]
