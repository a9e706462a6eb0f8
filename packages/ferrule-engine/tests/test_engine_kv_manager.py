"""KVCacheManager: block tables, prefix hits, sliding-window release, import, counters."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ferrule_engine.kv_cache import KVCacheManager
from ferrule_engine.request import Request

BS = 4


@dataclass
class Params:
    max_tokens: int = 8
    min_tokens: int = 0
    stop_token_ids: tuple = ()
    ignore_eos: bool = False
    n: int = 1


def _req(rid, tokens, **kwargs):
    return Request(rid, list(tokens), Params(), **kwargs)


def _compute(manager, request, count=None, *, lookup=True):
    """Schedule ``count`` tokens (default: all uncomputed) the way the scheduler does."""
    hits, num_hit = [], 0
    if lookup and not manager.has_blocks(request.request_id):
        hits, num_hit = manager.get_computed_blocks(request)
    if count is None:
        count = request.num_tokens - request.num_computed_tokens - num_hit
    new = manager.allocate_slots(request, count, hits, num_hit)
    assert new is not None
    request.num_computed_tokens += num_hit + count
    manager.check_consistency()
    return num_hit


def test_table_grows_by_blocks_and_free_returns_everything():
    manager = KVCacheManager(8, BS)
    request = _req("a", range(10))
    new = manager.allocate_slots(request, 10)
    assert [b.block_id for b in new] == [1, 2, 3] and manager.block_ids("a") == [1, 2, 3]
    request.num_computed_tokens = 10
    request.append_output_token(99)
    request.append_output_token(98)
    assert manager.allocate_slots(request, 1) == []  # position 10 still fits block 3
    request.num_computed_tokens = 11
    assert [b.block_id for b in manager.allocate_slots(request, 1)] == []
    request.num_computed_tokens = 12
    request.append_output_token(97)
    assert [b.block_id for b in manager.allocate_slots(request, 1)] == [4]
    assert manager.num_free_blocks == 3 and manager.usage == pytest.approx(4 / 7)
    manager.free(request)
    assert manager.block_ids("a") == [] and manager.num_free_blocks == 7
    assert list(manager.pool.free_queue)[-4:] == [4, 3, 2, 1]  # tail blocks evicted first
    manager.check_consistency()
    manager.free(request)  # idempotent


def test_prefix_hit_needs_full_blocks_and_leaves_the_last_token():
    manager = KVCacheManager(16, BS)
    _compute(manager, _req("a", range(10)))
    # same 8 leading tokens: both full blocks hit
    b = _req("b", [*range(8), 50, 51, 52])
    assert _compute(manager, b) == 8
    assert manager.block_ids("b")[:2] == manager.block_ids("a")[:2]
    assert b.num_computed_tokens == 11
    # a prompt of exactly two full blocks hits only one: its last token is recomputed
    c = _req("c", range(8))
    blocks, tokens = manager.get_computed_blocks(c)
    assert tokens == 4 and [x.block_id for x in blocks] == manager.block_ids("a")[:1]
    # a different first block breaks the chain, even though block 1's tokens agree
    d = _req("d", [7, 1, 2, 3, 4, 5, 6, 7, 8])
    assert manager.get_computed_blocks(d) == ([], 0)
    assert manager.pool.blocks[manager.block_ids("a")[0]].ref_cnt == 2


def test_a_hit_requires_the_parent_block_to_be_cached():
    manager = KVCacheManager(4, BS)  # 3 usable blocks
    a = _req("a", range(10))
    _compute(manager, a)
    first, second, _third = (manager.pool.blocks[i] for i in manager.block_ids("a"))
    manager.free(a)
    # evict block 0's content but keep block 1's: hold `second`, allocate the other two
    manager.pool.touch([second])
    manager.pool.allocate(2)
    assert first.block_hash is None and second.block_hash is not None
    assert manager.get_computed_blocks(_req("b", range(10))) == ([], 0)


def test_extra_keys_separate_equal_tokens():
    manager = KVCacheManager(16, BS)
    _compute(manager, _req("a", range(10), block_extra_keys=[(4, 6, "image-1")]))
    assert _compute(manager, _req("b", range(10), block_extra_keys=[(4, 6, "image-1")])) == 8
    assert _compute(manager, _req("c", range(10), block_extra_keys=[(4, 6, "image-2")])) == 4
    assert _compute(manager, _req("d", range(10))) == 4


def test_blocks_are_registered_when_scheduled_so_the_same_step_can_hit():
    manager = KVCacheManager(16, BS)
    a = _req("a", range(13))
    assert manager.allocate_slots(a, 6) is not None  # a chunk: one full block
    b = _req("b", range(13))
    assert manager.get_computed_blocks(b)[1] == 4  # before `a` is marked computed
    a.num_computed_tokens = 6
    assert manager.allocate_slots(a, 7) is not None
    assert manager.get_computed_blocks(b)[1] == 12


def test_allocation_is_all_or_nothing_and_counts_free_hit_blocks():
    manager = KVCacheManager(5, BS)  # 4 usable
    a = _req("a", range(9))
    _compute(manager, a)  # 3 blocks, 2 of them cached
    manager.free(a)
    b = _req("b", range(9))
    hits, num_hit = manager.get_computed_blocks(b)
    assert num_hit == 8
    filler = _req("f", range(8))
    _compute(manager, filler, lookup=False)  # takes the two uncached-or-oldest blocks
    assert manager.num_free_blocks == 2
    # b needs its 2 free hit blocks back plus 1 new block: 3 > 2 free
    before = (list(manager.pool.free_queue), [blk.ref_cnt for blk in manager.pool.blocks])
    assert not manager.can_allocate(b, 1, hits, num_hit)
    assert manager.allocate_slots(b, 1, hits, num_hit) is None
    assert (list(manager.pool.free_queue), [blk.ref_cnt for blk in manager.pool.blocks]) == before
    assert manager.block_ids("b") == []
    manager.free(filler)
    assert manager.allocate_slots(b, 1, hits, num_hit) is not None
    manager.check_consistency()


def test_sliding_window_returns_blocks_out_of_the_window():
    manager = KVCacheManager(16, BS, sliding_window=4)
    a = _req("a", range(20))
    _compute(manager, a, 8)
    first, second = manager.block_ids("a")
    _compute(manager, a, 4)  # positions 8..11 see 5..11: block 0 (0..3) goes
    assert manager.block_ids("a")[0] == 0 and manager.block_ids("a")[1] == second
    assert first in manager.pool.free_queue
    assert manager.pool.blocks[first].block_hash is not None  # still hittable
    _compute(manager, a, 1)  # position 12 sees 9..12: block 1 (4..7) goes
    assert manager.block_ids("a")[:2] == [0, 0] and second in manager.pool.free_queue
    assert len(manager.block_ids("a")) == 4
    manager.free(a)
    assert manager.num_free_blocks == 15


def test_sliding_window_keeps_a_block_another_request_holds():
    manager = KVCacheManager(16, BS, sliding_window=8)
    a, b = _req("a", range(16)), _req("b", [*range(8), 70, 71, 72, 73])
    _compute(manager, a, 8)
    assert _compute(manager, b, 2) == 8  # b hits a's two blocks, then computes 2
    shared = manager.block_ids("a")[0]
    _compute(manager, a, 4)
    _compute(manager, a, 4)  # positions 12..15 see 5..15: a lets block 0 go
    assert manager.block_ids("a")[0] == 0 and manager.block_ids("b")[0] == shared
    assert manager.pool.blocks[shared].ref_cnt == 1 and shared not in manager.pool.free_queue


def test_sliding_window_counts_only_unshared_released_blocks_as_supply():
    manager = KVCacheManager(5, BS, sliding_window=8)  # 4 usable
    a, b = _req("a", range(16)), _req("b", [*range(8), 70, 71])
    _compute(manager, a, 8)
    assert _compute(manager, b) == 8  # shares a's two blocks, adds one
    _compute(manager, a, 4)  # the pool is now full
    assert manager.num_free_blocks == 0
    # positions 12.. no longer see block 0, but b still holds it: nothing comes back
    assert not manager.can_allocate(a, 4)
    assert manager.allocate_slots(a, 4) is None
    assert manager.block_ids("a")[0] != 0  # no change, not even the release
    manager.free(b)
    assert manager.allocate_slots(a, 4) is not None  # block 0 returns and is reused at once
    assert manager.block_ids("a")[0] == 0
    manager.check_consistency()


def test_sliding_window_hits_skip_blocks_already_out_of_the_window():
    manager = KVCacheManager(16, BS, sliding_window=4)
    a = _req("a", range(17))
    _compute(manager, a)
    manager.free(a)
    b = _req("b", range(17))
    hits, num_hit = manager.get_computed_blocks(b)
    assert num_hit == 16
    assert manager.allocate_slots(b, 1, hits, num_hit) is not None
    # position 16 sees 13..16: hit blocks 0-2 are not taken, block 3 is
    table = manager.block_ids("b")
    assert table[:3] == [0, 0, 0] and table[3] == hits[3].block_id and len(table) == 5
    assert [h.ref_cnt for h in hits] == [0, 0, 0, 1]
    assert all(h.block_id in manager.pool.free_queue for h in hits[:3])
    assert manager.num_free_blocks == 15 - 2
    manager.check_consistency()


def test_import_blocks_marks_tokens_computed():
    manager = KVCacheManager(8, BS)
    request = _req("a", range(10))
    request.append_output_token(42)  # decode side: prompt computed elsewhere, 1 token sampled
    new = manager.import_blocks(request, 10)
    assert len(new) == 3 and request.num_computed_tokens == 10
    assert manager.get_computed_blocks(_req("b", range(10)))[1] == 8  # registered for hits
    assert manager.allocate_slots(request, 1) == []
    with pytest.raises(ValueError, match=r"import 1\.\.0"):
        manager.import_blocks(request, 1)
    short = KVCacheManager(3, BS)
    big = _req("c", range(12))
    assert short.import_blocks(big, 11) is None and big.num_computed_tokens == 0
    assert short.block_ids("c") == []


def test_counters_and_reset():
    manager = KVCacheManager(16, BS)
    assert (manager.prefix_queries, manager.prefix_hits, manager.hit_rate) == (0, 0, 0.0)
    _compute(manager, _req("a", range(10)))
    _compute(manager, _req("b", range(10)))
    assert (manager.prefix_queries, manager.prefix_hits) == (20, 8)
    assert manager.hit_rate == pytest.approx(0.4)
    assert manager.usage == pytest.approx(4 / 15)  # 3 + 1 blocks (2 shared)
    manager.reset_prefix_cache()
    assert manager.get_computed_blocks(_req("c", range(10))) == ([], 0)
    manager.check_consistency()


def test_without_prefix_caching_nothing_is_hashed_or_counted():
    manager = KVCacheManager(16, BS, enable_prefix_caching=False)
    _compute(manager, _req("a", range(10)))
    assert manager.get_computed_blocks(_req("b", range(10))) == ([], 0)
    assert not manager.pool.cached and manager.prefix_queries == 0


def test_misuse_is_refused():
    manager = KVCacheManager(8, BS)
    request = _req("a", range(6))
    with pytest.raises(ValueError, match="cannot hold 7 tokens"):
        manager.allocate_slots(request, 7)
    _compute(manager, request, 3)
    with pytest.raises(ValueError, match="only before its first allocation"):
        manager.get_computed_blocks(request)
    with pytest.raises(ValueError, match="sliding_window=0"):
        KVCacheManager(8, BS, sliding_window=0)
