"""The KV cache manager: block tables per request, prefix hits, sliding-window release.

Each request that holds KV owns a *block table*: block ``i`` of the table stores the K/V of
token positions ``i*B .. i*B + B - 1`` (``B = block_size``). The manager grows tables as the
scheduler schedules tokens, shares full blocks between requests with the same prefix, and
returns blocks to the :class:`~ferrule_engine.kv_cache.block_pool.BlockPool`.

Prefix hits (``get_computed_blocks``). The request's full blocks are hashed as a chain
(:mod:`~ferrule_engine.kv_cache.hashing`); the hit is the longest run of leading hashes found
in the pool's cache. The last token is always recomputed, because the step that computes it
produces the logits of the next token, so at most ``(num_tokens - 1) // B`` blocks hit: a
prompt of exactly two full blocks hits at most one. For a request resumed after preemption,
``num_tokens`` includes its outputs, so its own earlier blocks can hit.

Allocation (``allocate_slots``) makes the table cover ``num_computed_tokens +
num_new_computed_tokens + num_new_tokens`` tokens. It either succeeds completely or returns
None and changes nothing. Free cached blocks count as free (they are evicted on demand), but
a prefix hit on a free block takes that block off the free list, so it is counted against the
supply. Once allocated, every block that the scheduled tokens fill is registered under its hash
at once: the model writes a layer's K/V for the whole batch before attention reads it, so a
request scheduled later in the same step may already hit those blocks.

Sliding window ``W`` (same on every layer; a model with mixed layers passes None): the token at
position ``p`` attends to positions ``q`` with ``p - q < W``. Before tokens from position ``p``
on are computed, a block whose last position is ``<= p - W`` is seen by none of them or their
successors, so its reference is dropped and its table entry becomes the null block 0 (the
blocks this returns to the free list, hash kept, count toward the same allocation). Prefix hits
still need the whole chain cached; hit blocks already out of the window are not taken.

Counters (decision: counted when a request's first allocation succeeds, so a request that
waits and retries is counted once): ``prefix_queries`` is the number of tokens looked up,
``prefix_hits`` the number of them served from the cache, ``hit_rate`` their ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ferrule_engine.kv_cache.block_pool import BlockPool, KVBlock
from ferrule_engine.kv_cache.hashing import update_block_hashes

if TYPE_CHECKING:
    from ferrule_engine.request import Request


@dataclass
class _Table:
    """A request's blocks, plus how far hashing and sliding-window release have got."""

    blocks: list[KVBlock] = field(default_factory=list)
    num_hashed: int = 0  # leading blocks already offered to the prefix cache
    num_released: int = 0  # leading blocks replaced by the null block


@dataclass
class _Plan:
    """What an allocation would do, computed before anything changes."""

    num_new_blocks: int
    num_out_of_window: int
    num_needed_free: int  # new blocks + hit blocks that sit on the free list
    num_returned: int  # blocks the sliding window would give back to the free list


class KVCacheManager:
    """Block tables, prefix caching and sliding-window release over one :class:`BlockPool`."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        *,
        enable_prefix_caching: bool = True,
        sliding_window: int | None = None,
    ) -> None:
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size={block_size!r} must be a positive integer")
        if sliding_window is not None and (
            not isinstance(sliding_window, int) or sliding_window < 1
        ):
            raise ValueError(
                f"sliding_window={sliding_window!r} must be a positive integer or None"
            )
        self.pool = BlockPool(num_blocks)
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.sliding_window = sliding_window
        self.prefix_queries = 0
        self.prefix_hits = 0
        self._tables: dict[str, _Table] = {}

    # --- lookups --------------------------------------------------------------------

    def get_computed_blocks(self, request: Request) -> tuple[list[KVBlock], int]:
        """The cached blocks of the request's longest cached prefix, and their token count."""
        if not self.enable_prefix_caching:
            return [], 0
        if request.request_id in self._tables:
            raise ValueError(
                f"request {request.request_id!r} already holds blocks; prefix hits are looked up "
                "only before its first allocation"
            )
        hashes = update_block_hashes(request, self.block_size)
        hits: list[KVBlock] = []
        for block_hash in hashes[: (request.num_tokens - 1) // self.block_size]:
            block = self.pool.lookup(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits, len(hits) * self.block_size

    def block_ids(self, request_id: str) -> list[int]:
        """The request's block table (0 = released by the sliding window); [] if it has none."""
        table = self._tables.get(request_id)
        return [] if table is None else [b.block_id for b in table.blocks]

    def has_blocks(self, request_id: str) -> bool:
        return request_id in self._tables

    @property
    def num_requests(self) -> int:  # requests holding a block table
        return len(self._tables)

    # --- allocation -----------------------------------------------------------------

    def can_allocate(
        self,
        request: Request,
        num_new_tokens: int,
        new_computed_blocks: Sequence[KVBlock] = (),
        num_new_computed_tokens: int = 0,
    ) -> bool:
        """Whether :meth:`allocate_slots` with these arguments would succeed now."""
        plan = self._plan(request, num_new_tokens, new_computed_blocks, num_new_computed_tokens)
        return plan.num_needed_free <= self.pool.num_free_blocks + plan.num_returned

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        new_computed_blocks: Sequence[KVBlock] = (),
        num_new_computed_tokens: int = 0,
    ) -> list[KVBlock] | None:
        """Make room for ``num_new_tokens`` more tokens (after the prefix hit, if any).

        Returns the newly allocated blocks, or None (and no change) when the pool is short.
        """
        if not new_computed_blocks and self.sliding_window is None and num_new_tokens >= 0:
            # The common decode step: the request's blocks already hold the new tokens and
            # no block fills up, so there is nothing to plan, allocate or register.
            table = self._tables.get(request.request_id)
            total = request.num_computed_tokens + num_new_tokens
            if (
                table is not None
                and total <= len(table.blocks) * self.block_size
                and total <= request.num_tokens
                and (not self.enable_prefix_caching or total // self.block_size <= table.num_hashed)
            ):
                return []
        return self._allocate(
            request, num_new_tokens, new_computed_blocks, num_new_computed_tokens, count=True
        )

    def import_blocks(self, request: Request, num_tokens: int) -> list[KVBlock] | None:
        """Allocate blocks for ``num_tokens`` tokens whose K/V arrives from elsewhere.

        The tokens follow ``request.num_computed_tokens``, which advances by ``num_tokens``;
        full blocks are registered for prefix hits at once, so the caller must write their K/V
        before the next model step. At least the request's last token stays to be computed
        here (its step samples the next token). None (and no change) when the pool is short.
        """
        left = request.num_tokens - request.num_computed_tokens
        if not 1 <= num_tokens <= left - 1:
            raise ValueError(
                f"request {request.request_id!r}: cannot import {num_tokens} tokens; it has {left} "
                f"uncomputed tokens and the last must be computed here, so import 1..{left - 1}"
            )
        new_blocks = self._allocate(request, num_tokens, (), 0, count=False)
        if new_blocks is not None:
            request.num_computed_tokens += num_tokens
        return new_blocks

    def free(self, request: Request) -> None:
        """Drop the request's references, last block first; no-op if it holds none."""
        table = self._tables.pop(request.request_id, None)
        if table is not None:
            self.pool.free(reversed(table.blocks))

    def reset_prefix_cache(self) -> None:
        """Forget every cached hash (blocks in use keep their content)."""
        self.pool.reset_prefix_cache()

    # --- counters -------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def usage(self) -> float:
        return self.pool.usage

    @property
    def hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0

    # --- internals ------------------------------------------------------------------

    def _plan(
        self,
        request: Request,
        num_new_tokens: int,
        new_computed_blocks: Sequence[KVBlock],
        num_new_computed_tokens: int,
    ) -> _Plan:
        table = self._tables.get(request.request_id)
        rid = request.request_id
        if num_new_tokens < 0:
            raise ValueError(f"request {rid!r}: num_new_tokens={num_new_tokens} must be >= 0")
        if num_new_computed_tokens != len(new_computed_blocks) * self.block_size:
            raise ValueError(
                f"request {rid!r}: num_new_computed_tokens={num_new_computed_tokens} must equal "
                f"{len(new_computed_blocks)} hit blocks x block_size {self.block_size}"
            )
        if (table is None and request.num_computed_tokens) or (table and new_computed_blocks):
            raise ValueError(
                f"{request!r}: computed tokens need blocks, and prefix hits come only with the "
                "first allocation"
            )
        start = request.num_computed_tokens + num_new_computed_tokens
        total = start + num_new_tokens
        if total > request.num_tokens:
            raise ValueError(
                f"request {rid!r}: cannot hold {total} tokens, it has only {request.num_tokens}"
            )
        blocks = table.blocks if table is not None else []
        have = len(blocks) + len(new_computed_blocks)
        num_new_blocks = max(0, -(-total // self.block_size) - have)
        out = self._num_out_of_window(start)
        reused = sum(1 for b in new_computed_blocks[out:] if b.ref_cnt == 0)
        first = table.num_released if table is not None else 0
        returned = sum(1 for b in blocks[first:out] if b.ref_cnt == 1)
        return _Plan(num_new_blocks, out, num_new_blocks + reused, returned)

    def _num_out_of_window(self, position: int) -> int:
        """Leading blocks that no token at ``position`` or later can see."""
        if self.sliding_window is None:
            return 0
        return max(0, (position - self.sliding_window + 1) // self.block_size)

    def _allocate(
        self,
        request: Request,
        num_new_tokens: int,
        new_computed_blocks: Sequence[KVBlock],
        num_new_computed_tokens: int,
        *,
        count: bool,
    ) -> list[KVBlock] | None:
        plan = self._plan(request, num_new_tokens, new_computed_blocks, num_new_computed_tokens)
        if plan.num_needed_free > self.pool.num_free_blocks + plan.num_returned:
            return None
        table = self._tables.get(request.request_id)
        if table is None:
            table = self._tables[request.request_id] = _Table(num_hashed=len(new_computed_blocks))
            if count and self.enable_prefix_caching:
                self.prefix_queries += request.num_tokens
                self.prefix_hits += num_new_computed_tokens
        # Sliding window: release what the new tokens can no longer see.
        out = min(plan.num_out_of_window, len(table.blocks))
        if out > table.num_released:
            released = table.blocks[table.num_released : out]
            table.blocks[table.num_released : out] = [self.pool.null_block] * len(released)
            table.num_released = out
            self.pool.free(reversed(released))
        # Prefix hits: hit blocks already out of the window are not taken at all.
        for block in new_computed_blocks:
            if len(table.blocks) < plan.num_out_of_window:
                table.blocks.append(self.pool.null_block)
                table.num_released = len(table.blocks)
            else:
                self.pool.touch([block])
                table.blocks.append(block)
        new_blocks = self.pool.allocate(plan.num_new_blocks)
        table.blocks.extend(new_blocks)
        if self.enable_prefix_caching:
            self._register_full_blocks(request, table, num_new_computed_tokens + num_new_tokens)
        return new_blocks

    def _register_full_blocks(self, request: Request, table: _Table, num_scheduled: int) -> None:
        num_full = (request.num_computed_tokens + num_scheduled) // self.block_size
        if num_full <= table.num_hashed:
            return
        hashes = update_block_hashes(request, self.block_size)
        for index in range(table.num_hashed, num_full):
            block = table.blocks[index]
            if not block.is_null:
                self.pool.cache_block(block, hashes[index])
        table.num_hashed = num_full

    def check_consistency(self) -> None:
        """Raise RuntimeError if any block is leaked, double-held or mis-cached."""
        for rid, table in self._tables.items():
            ids = [b.block_id for b in table.blocks if not b.is_null]
            if len(ids) != len(set(ids)):
                raise RuntimeError(f"request {rid!r} holds a block twice: {ids}")
            if any(not b.is_null for b in table.blocks[: table.num_released]):
                raise RuntimeError(f"request {rid!r} kept a block the sliding window released")
        self.pool.check_consistency(t.blocks for t in self._tables.values())
