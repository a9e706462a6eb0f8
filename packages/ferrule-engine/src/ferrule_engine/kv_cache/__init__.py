"""The paged KV cache's bookkeeping: blocks, prefix-cache hashes and per-request tables.

Pure Python: the tensors themselves belong to the model runner; this package only decides
which block of them each token's K/V lives in.
"""

from __future__ import annotations

from ferrule_engine.kv_cache.block_pool import NULL_BLOCK_ID, BlockPool, KVBlock
from ferrule_engine.kv_cache.hashing import ROOT_HASH, BlockHash, block_hash, update_block_hashes
from ferrule_engine.kv_cache.manager import KVCacheManager

__all__ = [
    "NULL_BLOCK_ID",
    "ROOT_HASH",
    "BlockHash",
    "BlockPool",
    "KVBlock",
    "KVCacheManager",
    "block_hash",
    "update_block_hashes",
]
