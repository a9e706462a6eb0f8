"""The pool of KV blocks: reference counts, an LRU free list, and the prefix-cache map.

Block 0 is the *null block*: it is never handed out, never freed, and never cached. Block
tables point at it where a sliding-window layer has released a block it no longer sees.
Blocks ``1 .. num_blocks - 1`` are usable.

A block is *in use* while ``ref_cnt > 0`` (one reference per block table that holds it; two
requests sharing a cached prefix both hold its blocks). A block whose count drops to 0 goes to
the tail of the free list but keeps its content and its hash, so a later request with the same
prefix can take it back ("touch") until it is reused for something else.

The free list is an LRU queue (an ``OrderedDict`` keyed by block id)::

    head (evicted first)  <──  ...  <──  tail (freed last)

``allocate`` pops from the head; a popped block that still held a hash is evicted from the
``cached`` map (its content is about to be overwritten). ``free`` appends to the tail, and the
manager frees a request's blocks last-to-first, so a finished sequence's tail blocks, the ones
least likely to be shared, are evicted before its prefix. ``touch`` of a free cached block
removes it from the free list wherever it sits.

Invariant: ``block.block_hash is not None`` exactly when ``cached[block.block_hash] is block``.
When a second block with an already cached hash becomes full (two requests computed the same
prefix in the same step), it is left unhashed; the first block stays the canonical copy.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable

from ferrule_engine.kv_cache.hashing import BlockHash

NULL_BLOCK_ID = 0


class KVBlock:
    """One block of ``block_size`` token slots in every layer's KV cache."""

    __slots__ = ("block_hash", "block_id", "ref_cnt")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: BlockHash | None = None

    @property
    def is_null(self) -> bool:
        return self.block_id == NULL_BLOCK_ID

    def __repr__(self) -> str:
        cached = "" if self.block_hash is None else f", hash={self.block_hash[:4].hex()}"
        return f"KVBlock({self.block_id}, ref={self.ref_cnt}{cached})"


class BlockPool:
    """``num_blocks`` blocks (block 0 reserved), their LRU free list and the hash map."""

    def __init__(self, num_blocks: int) -> None:
        if not isinstance(num_blocks, int) or num_blocks < 2:
            raise ValueError(
                f"num_blocks={num_blocks!r} must be an integer >= 2 (block 0 is the reserved "
                "null block, so at least one more is needed)"
            )
        self.num_blocks = num_blocks
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self.null_block = self.blocks[NULL_BLOCK_ID]
        self.free_queue: OrderedDict[int, KVBlock] = OrderedDict(
            (b.block_id, b) for b in self.blocks[1:]
        )
        self.cached: dict[BlockHash, KVBlock] = {}

    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        """Blocks with no reference, cached or not (a cached free block can be evicted)."""
        return len(self.free_queue)

    @property
    def usage(self) -> float:
        """Fraction of the usable blocks referenced by some request."""
        return 1.0 - self.num_free_blocks / self.num_usable_blocks

    def allocate(self, count: int) -> list[KVBlock]:
        """Take ``count`` blocks from the head of the free list, evicting their hashes."""
        if count > len(self.free_queue):
            raise RuntimeError(
                f"asked for {count} KV blocks but only {len(self.free_queue)} are free; "
                "check num_free_blocks first"
            )
        taken = []
        for _ in range(count):
            _, block = self.free_queue.popitem(last=False)
            self._evict(block)
            block.ref_cnt = 1
            taken.append(block)
        return taken

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """Add a reference to each block (a prefix hit), taking free ones off the free list."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self.free_queue[block.block_id]
            block.ref_cnt += 1

    def free(self, blocks: Iterable[KVBlock]) -> None:
        """Drop one reference from each block, in order; blocks reaching 0 join the tail."""
        for block in blocks:
            if block.is_null:
                continue
            if block.ref_cnt <= 0:
                raise RuntimeError(f"{block!r} freed more often than it was referenced")
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self.free_queue[block.block_id] = block

    def lookup(self, block_hash: BlockHash) -> KVBlock | None:
        return self.cached.get(block_hash)

    def cache_block(self, block: KVBlock, block_hash: BlockHash) -> bool:
        """Record that ``block`` holds the content ``block_hash``; False if another already does."""
        if block.block_hash is not None or block_hash in self.cached:
            return False
        block.block_hash = block_hash
        self.cached[block_hash] = block
        return True

    def reset_prefix_cache(self) -> None:
        """Forget every hash; blocks in use keep their content but can no longer be hit."""
        for block in self.cached.values():
            block.block_hash = None
        self.cached.clear()

    def check_consistency(self, tables: Iterable[list[KVBlock]]) -> None:
        """Raise RuntimeError unless ref counts, free list and hash map agree with ``tables``."""
        refs: Counter[int] = Counter(b.block_id for t in tables for b in t if not b.is_null)
        null = self.null_block
        if null.ref_cnt or null.block_hash is not None or null.block_id in self.free_queue:
            raise RuntimeError(f"the null block was used: {null!r}")
        for block in self.blocks[1:]:
            if block.ref_cnt != refs[block.block_id]:
                raise RuntimeError(
                    f"{block!r} has ref_cnt {block.ref_cnt} but {refs[block.block_id]} tables hold it"
                )
            if (block.block_id in self.free_queue) != (block.ref_cnt == 0):
                raise RuntimeError(f"{block!r} is misplaced with respect to the free list")
            if block.block_hash is not None and self.cached.get(block.block_hash) is not block:
                raise RuntimeError(f"{block!r} has a hash the cache map does not point back to")
        for block_hash, block in self.cached.items():
            if block.block_hash != block_hash:
                raise RuntimeError(f"the cache map points at {block!r} under another hash")

    def _evict(self, block: KVBlock) -> None:
        if block.block_hash is not None:
            del self.cached[block.block_hash]
            block.block_hash = None
