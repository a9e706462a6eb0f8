"""Chained block hashes: the identity of a block's content for prefix caching.

The K/V of a token depends on that token and on every token before it, so a full block can be
reused only by a sequence whose *whole* prefix up to the end of the block is the same. The hash
of block ``i`` therefore covers its own tokens and the hash of block ``i - 1``::

    h0 = H(ROOT_HASH, tokens[0:B], extra keys of block 0)
    h1 = H(h0,        tokens[B:2B], extra keys of block 1)
    ...

A lookup walks the chain from block 0 and stops at the first miss, so a hit on block ``i``
implies hits on all of its parents.

``extra keys`` distinguish blocks whose token ids agree but whose content does not, e.g. image
placeholder tokens of two different images. A request names them as spans
``(start, end, key)`` over its prompt; each span that overlaps a block adds
``(start - block_start, end - block_start, key)`` to the block's hash (the offsets say which
part of the span lies in the block). Keys must have a stable ``repr`` (str, int, bytes, or
tuples of them).

H is SHA-256 over a fixed byte encoding, not Python's ``hash``: a collision would silently
serve another sequence's K/V, and 64-bit hashes make that conceivable on long-lived servers.
Hashes are 32-byte ``bytes`` objects.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ferrule_engine.request import Request

BlockHash = bytes
ROOT_HASH: BlockHash = hashlib.sha256(b"ferrule prefix cache v1").digest()


def block_hash(
    parent_hash: BlockHash, token_ids: Sequence[int], extra_keys: Sequence[object] = ()
) -> BlockHash:
    """The hash of a full block given its parent's hash, its tokens and its extra keys."""
    digest = hashlib.sha256(parent_hash)
    digest.update(len(token_ids).to_bytes(4, "little"))
    digest.update(array("q", token_ids).tobytes())
    if extra_keys:
        digest.update(repr(tuple(extra_keys)).encode())
    return digest.digest()


def extra_keys_of_block(
    spans: Sequence[tuple[int, int, object]], start: int, end: int
) -> tuple[object, ...]:
    """``(s - start, e - start, key)`` for each span [s, e) overlapping [start, end)."""
    return tuple((s - start, e - start, key) for s, e, key in spans if s < end and e > start)


def update_block_hashes(request: Request, block_size: int) -> list[BlockHash]:
    """Extend ``request.block_hashes`` to cover every full block of its tokens; return it.

    Only the blocks not hashed yet are computed, so calling this every step is cheap.
    """
    hashes = request.block_hashes
    tokens = request.all_token_ids
    parent = hashes[-1] if hashes else ROOT_HASH
    for index in range(len(hashes), len(tokens) // block_size):
        start, end = index * block_size, (index + 1) * block_size
        extra = extra_keys_of_block(request.block_extra_keys, start, end)
        parent = block_hash(parent, tokens[start:end], extra)
        hashes.append(parent)
    return hashes
