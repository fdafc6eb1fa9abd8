"""Fixed-size KV blocks: a free list, per-sequence block tables, and (optionally) a prefix cache."""

from __future__ import annotations

from splitspec.errors import OutOfKVBlocks
from splitspec.models.prefix_cache import PrefixCache, block_keys


class BlockAllocator:
    """Owns which physical blocks belong to which sequence and how many tokens each sequence holds.

    Rolling back rejected positions only shortens a sequence's length (and returns whole blocks that
    fall past the end); no KV data is copied.

    With prefix caching, a full block of committed tokens can be indexed (`cache_prefix`) and shared by
    later sequences that start with the same tokens (`reuse_prefix`); a block is returned to the free
    pool only when no sequence holds it, and a cached one stays readable there until it is needed.
    Shared blocks are full and hold committed tokens, so no sequence writes into them: a sequence
    appends after its adopted blocks, and is never cut back into them.
    """

    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = False) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._tables: dict[str, list[int]] = {}
        self._lengths: dict[str, int] = {}
        self._holders = [0] * num_blocks  # how many sequences' tables hold each block
        self.prefix_cache = PrefixCache() if prefix_caching else None
        self._keys: dict[str, list[bytes]] = {}  # per sequence, the keys of its first blocks, in order

    @property
    def num_free_blocks(self) -> int:
        """Blocks a sequence can be given: free ones, and cached ones no sequence holds."""
        parked = self.prefix_cache.num_parked if self.prefix_cache is not None else 0
        return len(self._free) + parked

    def has(self, seq_id: str) -> bool:
        return seq_id in self._tables

    def length(self, seq_id: str) -> int:
        return self._lengths.get(seq_id, 0)

    def block_table(self, seq_id: str) -> list[int]:
        return self._tables.get(seq_id, [])

    def blocks_needed(self, seq_id: str, num_new_tokens: int) -> int:
        total = self.length(seq_id) + num_new_tokens
        return max(0, -(-total // self.block_size) - len(self.block_table(seq_id)))

    def append(self, seq_id: str, num_new_tokens: int) -> list[int]:
        """Grow a sequence by `num_new_tokens` and return the flat cache slots they occupy."""
        needed = self.blocks_needed(seq_id, num_new_tokens)
        if needed > self.num_free_blocks:
            raise OutOfKVBlocks(f"sequence {seq_id} needs {needed} blocks, {self.num_free_blocks} free")
        table = self._tables.setdefault(seq_id, [])
        start = self._lengths.get(seq_id, 0)
        for _ in range(needed):
            table.append(self._take())
        self._lengths[seq_id] = start + num_new_tokens
        bs = self.block_size
        return [table[pos // bs] * bs + pos % bs for pos in range(start, start + num_new_tokens)]

    def truncate(self, seq_id: str, length: int) -> None:
        """Forget every position at or after `length` (rollback of rejected drafts)."""
        current = self.length(seq_id)
        if not 0 <= length <= current:
            raise ValueError(f"cannot truncate sequence {seq_id} of length {current} to {length}")
        table = self._tables.get(seq_id, [])
        keep, kept_whole = -(-length // self.block_size), length // self.block_size
        cut_into = table[kept_whole] if kept_whole < keep else None  # kept in part: its tail is written again
        if cut_into is not None and self._holders[cut_into] > 1:
            raise ValueError(f"cannot cut sequence {seq_id} into a block other sequences share")
        while len(table) > keep:
            self._release(table.pop())
        if seq_id in self._keys:
            del self._keys[seq_id][kept_whole:]
        if cut_into is not None and self.prefix_cache is not None:
            self.prefix_cache.forget(cut_into)
        self._lengths[seq_id] = length

    def free(self, seq_id: str) -> None:
        for block in reversed(self._tables.pop(seq_id, [])):  # the tail parks first, so it is evicted first
            self._release(block)
        self._lengths.pop(seq_id, None)
        self._keys.pop(seq_id, None)

    def reuse_prefix(self, seq_id: str, token_ids: list[int]) -> int:
        """Give a new sequence the cached blocks that hold the longest prefix of token_ids, all but its
        last token (a pass must still compute that one's logits). Returns the tokens now cached."""
        if self.prefix_cache is None or self.has(seq_id):
            return self.length(seq_id)
        cache = self.prefix_cache
        keys = block_keys(token_ids[:-1], self.block_size)
        table: list[int] = []
        for key in keys:
            block = cache.lookup(key)
            if block is None:
                break
            if self._holders[block] == 0:
                cache.unpark(block)
            self._holders[block] += 1
            table.append(block)
        cache.queries += len(token_ids)
        cache.hits += len(table) * self.block_size
        if table:
            self._tables[seq_id] = table
            self._lengths[seq_id] = len(table) * self.block_size
            self._keys[seq_id] = keys[: len(table)]
        return self.length(seq_id)

    def cache_prefix(self, seq_id: str, token_ids: list[int]) -> None:
        """Index the sequence's full blocks: token_ids are its tokens, committed from the first through
        every cached position."""
        if self.prefix_cache is None or not self.has(seq_id):
            return
        keys = self._keys.setdefault(seq_id, [])
        whole = self.length(seq_id) // self.block_size
        if len(keys) >= whole:
            return
        parent = keys[-1] if keys else b""
        new = block_keys(token_ids[: whole * self.block_size], self.block_size, parent, len(keys))
        table = self._tables[seq_id]
        for i, key in enumerate(new, start=len(keys)):
            self.prefix_cache.insert(key, table[i])
        keys.extend(new)

    def _take(self) -> int:
        block = self._free.pop() if self._free else self.prefix_cache.evict()
        self._holders[block] = 1
        return block

    def _release(self, block: int) -> None:
        self._holders[block] -= 1
        if self._holders[block]:
            return
        if self.prefix_cache is not None and self.prefix_cache.holds(block):
            self.prefix_cache.park(block)
        else:
            self._free.append(block)
