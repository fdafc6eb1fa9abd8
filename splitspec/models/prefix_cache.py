"""Full KV blocks kept under the hash of the tokens they hold, for sequences that start the same way.

A block's key is chained: sha256 of its parent block's key and its own token ids, so equal keys mean
equal tokens from position 0 through the block's end, which is what a block's keys and values depend
on (one model, one dtype per cache). sha256, not Python's hash: keys are the same in every process, so
a gateway can compute which blocks a verifier may hold.

The cache only indexes blocks; the allocator (splitspec.models.block_allocator) owns them and counts
the sequences holding each. A cached block no sequence holds is "parked": kept, least recently used
first in line, until the allocator needs a block and has no free one.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict


def block_keys(token_ids: list[int], block_size: int, parent: bytes = b"", first_block: int = 0) -> list[bytes]:
    """The keys of the full blocks of token_ids from block `first_block` on, chained from `parent`
    (the key of block first_block - 1; b"" for block 0)."""
    keys = []
    for start in range(first_block * block_size, len(token_ids) - block_size + 1, block_size):
        tokens = array("q", token_ids[start : start + block_size]).tobytes()
        parent = hashlib.sha256(parent + tokens).digest()
        keys.append(parent)
    return keys


class PrefixCache:
    def __init__(self) -> None:
        self._blocks: dict[bytes, int] = {}  # key -> block holding those tokens
        self._keys: dict[int, bytes] = {}  # block -> its key
        self._parked: OrderedDict[int, None] = OrderedDict()  # cached blocks no sequence holds, oldest first
        self.queries = 0  # prompt tokens looked up
        self.hits = 0  # of those, tokens found

    @property
    def num_parked(self) -> int:
        return len(self._parked)

    @property
    def num_cached(self) -> int:
        return len(self._blocks)

    def lookup(self, key: bytes) -> int | None:
        return self._blocks.get(key)

    def holds(self, block: int) -> bool:
        return block in self._keys

    def insert(self, key: bytes, block: int) -> None:
        """Index `block` under `key`, unless another block already holds those tokens."""
        if key not in self._blocks and block not in self._keys:
            self._blocks[key] = block
            self._keys[block] = key

    def forget(self, block: int) -> None:
        """The block's tokens are about to change: drop it from the index."""
        key = self._keys.pop(block, None)
        if key is not None:
            del self._blocks[key]
        self._parked.pop(block, None)

    def park(self, block: int) -> None:
        self._parked[block] = None

    def unpark(self, block: int) -> None:
        self._parked.pop(block, None)

    def evict(self) -> int:
        """The least recently parked block, forgotten, for reuse."""
        block, _ = self._parked.popitem(last=False)
        self.forget(block)
        return block
