"""The block pool's LRU free list and hash map, and the chained block hashes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ferrule_engine.kv_cache import ROOT_HASH, BlockPool, block_hash, update_block_hashes
from ferrule_engine.request import Request


def _ids(blocks):
    return [b.block_id for b in blocks]


def test_block_zero_is_reserved():
    pool = BlockPool(4)
    assert pool.num_usable_blocks == 3 and pool.num_free_blocks == 3
    assert _ids(pool.allocate(3)) == [1, 2, 3]
    with pytest.raises(RuntimeError, match="only 0 are free"):
        pool.allocate(1)
    pool.free([pool.null_block])  # freeing the null block is a no-op
    assert pool.null_block.ref_cnt == 0 and pool.num_free_blocks == 0
    with pytest.raises(ValueError, match="num_blocks=1"):
        BlockPool(1)


def test_free_appends_to_the_tail_and_allocate_takes_the_head():
    pool = BlockPool(6)
    blocks = pool.allocate(5)
    assert pool.usage == 1.0
    pool.free(reversed(blocks[:3]))  # a request's blocks, last first: 3, 2, 1
    pool.free([blocks[4]])  # then block 5
    assert list(pool.free_queue) == [3, 2, 1, 5]
    assert pool.usage == pytest.approx(1 / 5)
    assert _ids(pool.allocate(2)) == [3, 2]  # least recently freed first
    assert list(pool.free_queue) == [1, 5]


def test_shared_block_returns_to_the_pool_only_with_its_last_reference():
    pool = BlockPool(3)
    (block,) = pool.allocate(1)
    pool.touch([block])
    assert block.ref_cnt == 2
    pool.free([block])
    assert block.ref_cnt == 1 and block.block_id not in pool.free_queue
    pool.free([block])
    assert block.ref_cnt == 0 and block.block_id in pool.free_queue
    with pytest.raises(RuntimeError, match="freed more often"):
        pool.free([block])


def test_cached_free_block_is_reused_by_touch_and_evicted_by_allocate():
    pool = BlockPool(4)
    a, b, c = pool.allocate(3)
    assert pool.cache_block(a, b"ha") and pool.cache_block(b, b"hb")
    pool.free([c, b, a])
    assert list(pool.free_queue) == [3, 2, 1]
    # a hit takes the block out of the middle of the free list, content and hash intact
    assert pool.lookup(b"hb") is b
    pool.touch([b])
    assert b.ref_cnt == 1 and list(pool.free_queue) == [3, 1] and b.block_hash == b"hb"
    pool.free([b])
    assert list(pool.free_queue) == [3, 1, 2]
    # allocation evicts in LRU order: 3 (no hash), then 1 (drops "ha"); "hb" survives
    assert _ids(pool.allocate(2)) == [3, 1]
    assert pool.lookup(b"ha") is None and a.block_hash is None
    assert pool.lookup(b"hb") is b
    pool.check_consistency([[c, a]])


def test_second_block_with_a_cached_hash_stays_unhashed():
    pool = BlockPool(4)
    a, b = pool.allocate(2)
    assert pool.cache_block(a, b"h")
    assert not pool.cache_block(b, b"h")
    assert b.block_hash is None and pool.lookup(b"h") is a
    pool.reset_prefix_cache()
    assert a.block_hash is None and pool.lookup(b"h") is None


def test_consistency_check_catches_a_wrong_ref_count():
    pool = BlockPool(3)
    (a,) = pool.allocate(1)
    pool.check_consistency([[a]])
    with pytest.raises(RuntimeError, match="ref_cnt 1 but 2 tables"):
        pool.check_consistency([[a], [a]])
    with pytest.raises(RuntimeError, match="ref_cnt 1 but 0 tables"):
        pool.check_consistency([])


# --- hashing ------------------------------------------------------------------------


@dataclass
class Params:
    max_tokens: int = 8
    min_tokens: int = 0
    stop_token_ids: tuple = ()
    ignore_eos: bool = False
    n: int = 1


def test_block_hash_is_chained_and_sensitive_to_every_input():
    h0 = block_hash(ROOT_HASH, [1, 2, 3, 4])
    assert h0 == block_hash(ROOT_HASH, [1, 2, 3, 4]) and len(h0) == 32
    assert h0 != block_hash(ROOT_HASH, [1, 2, 3, 5])
    assert h0 != block_hash(b"\0" * 32, [1, 2, 3, 4])
    assert h0 != block_hash(ROOT_HASH, [1, 2, 3, 4], [(0, "img")])
    assert block_hash(ROOT_HASH, [1], [(0, "a")]) != block_hash(ROOT_HASH, [1], [(0, "b")])
    # length is part of the encoding: no ambiguity between token streams
    assert block_hash(ROOT_HASH, [1, 2]) != block_hash(ROOT_HASH, [1, 2, 0])


def test_request_hashes_cover_full_blocks_and_extend_lazily():
    request = Request("r", list(range(10)), Params())
    hashes = update_block_hashes(request, 4)
    assert len(hashes) == 2 and hashes is request.block_hashes
    assert hashes[0] == block_hash(ROOT_HASH, [0, 1, 2, 3])
    assert hashes[1] == block_hash(hashes[0], [4, 5, 6, 7])
    request.append_output_token(10)
    request.append_output_token(11)
    assert len(update_block_hashes(request, 4)) == 3
    assert request.block_hashes[2] == block_hash(hashes[1], [8, 9, 10, 11])


def test_extra_keys_enter_only_the_blocks_their_span_overlaps():
    plain = update_block_hashes(Request("a", list(range(12)), Params()), 4)
    image = Request("b", list(range(12)), Params(), block_extra_keys=[(5, 7, "img")])
    hashes = update_block_hashes(image, 4)
    assert hashes[0] == plain[0]
    assert hashes[1] == block_hash(plain[0], [4, 5, 6, 7], [(1, 3, "img")])
    assert hashes[1] != plain[1] and hashes[2] != plain[2]  # the chain carries the difference
    other = Request("c", list(range(12)), Params(), block_extra_keys=[(5, 7, "other")])
    assert update_block_hashes(other, 4)[1] != hashes[1]
    longer = Request("d", list(range(12)), Params(), block_extra_keys=[(5, 8, "img")])
    assert update_block_hashes(longer, 4)[1] != hashes[1]  # same key, other positions
