"""Fixed-size KV blocks: a free list and per-sequence block tables."""

from __future__ import annotations

from splitspec.errors import OutOfKVBlocks


class BlockAllocator:
    """Owns which physical blocks belong to which sequence and how many tokens each sequence holds.

    Rolling back rejected positions only shortens a sequence's length (and returns whole blocks that
    fall past the end); no KV data is copied.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._tables: dict[str, list[int]] = {}
        self._lengths: dict[str, int] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

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
        if needed > len(self._free):
            raise OutOfKVBlocks(f"sequence {seq_id} needs {needed} blocks, {len(self._free)} free")
        table = self._tables.setdefault(seq_id, [])
        start = self._lengths.get(seq_id, 0)
        for _ in range(needed):
            table.append(self._free.pop())
        self._lengths[seq_id] = start + num_new_tokens
        bs = self.block_size
        return [table[pos // bs] * bs + pos % bs for pos in range(start, start + num_new_tokens)]

    def truncate(self, seq_id: str, length: int) -> None:
        """Forget every position at or after `length` (rollback of rejected drafts)."""
        current = self.length(seq_id)
        if not 0 <= length <= current:
            raise ValueError(f"cannot truncate sequence {seq_id} of length {current} to {length}")
        table = self._tables.get(seq_id, [])
        keep = -(-length // self.block_size)
        while len(table) > keep:
            self._free.append(table.pop())
        self._lengths[seq_id] = length

    def free(self, seq_id: str) -> None:
        for block in reversed(self._tables.pop(seq_id, [])):
            self._free.append(block)
        self._lengths.pop(seq_id, None)
