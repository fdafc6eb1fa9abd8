"""Properties of the paged KV cache's bookkeeping under random append / rollback / free sequences.

Two state machines: one checks the allocator's block accounting against a model that remembers the
slot each live position was given; the other writes real keys and values through those slots and
checks that paged attention over the block tables equals plain attention over each sequence's
logical (contiguous) keys and values.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
import torch.nn.functional as F
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from splitspec.errors import OutOfKVBlocks
from splitspec.models.block_allocator import BlockAllocator
from splitspec_kernels.paged_attention import AttentionBatch
from splitspec_kernels.paged_attention import paged_attention_reference as paged_attention
from splitspec_kernels.paged_attention import write_kv_cache_reference as write_kv_cache

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny tensors: a thread pool only adds waits

SEQ_IDS = st.sampled_from(["a", "b", "c"])


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _expected_slot(table: list[int], position: int, block_size: int) -> int:
    return table[position // block_size] * block_size + position % block_size


def _snapshot(allocator: BlockAllocator, seq_ids: list[str]) -> tuple:
    return (
        allocator.num_free_blocks,
        list(allocator._free),
        {s: (allocator.has(s), allocator.length(s), list(allocator.block_table(s))) for s in seq_ids},
    )


class AllocatorMachine(RuleBasedStateMachine):
    """`slots[seq][pos]` is the slot `append` returned for position `pos` of a live sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.allocator: BlockAllocator
        self.slots: dict[str, list[int]] = {}

    @initialize(num_blocks=st.integers(1, 10), block_size=st.integers(1, 4))
    def create(self, num_blocks: int, block_size: int) -> None:
        self.allocator = BlockAllocator(num_blocks, block_size)

    @rule(seq=SEQ_IDS, n=st.integers(0, 9))
    def append(self, seq: str, n: int) -> None:
        bs = self.allocator.block_size
        table = self.allocator.block_table(seq)
        needed = _ceil_div(self.allocator.length(seq) + n, bs) - len(table)
        fits = needed <= self.allocator.num_free_blocks
        before = _snapshot(self.allocator, ["a", "b", "c"])
        try:
            slots = self.allocator.append(seq, n)
        except OutOfKVBlocks:
            assert not fits, f"append of {n} to {seq} needed {needed} blocks and {before[0]} were free"
            assert _snapshot(self.allocator, ["a", "b", "c"]) == before, "a failed append changed the allocator"
            return
        assert fits, f"append of {n} to {seq} succeeded with {needed} blocks needed and {before[0]} free"
        assert len(slots) == n
        self.slots.setdefault(seq, []).extend(slots)

    @rule(seq=SEQ_IDS, data=st.data())
    def truncate(self, seq: str, data: st.DataObject) -> None:
        length = data.draw(st.integers(0, self.allocator.length(seq)), label="length")
        self.allocator.truncate(seq, length)
        if seq in self.slots:
            del self.slots[seq][length:]

    @rule(seq=SEQ_IDS, past_end=st.integers(1, 3))
    def truncate_past_the_end_is_refused(self, seq: str, past_end: int) -> None:
        before = _snapshot(self.allocator, ["a", "b", "c"])
        with pytest.raises(ValueError):
            self.allocator.truncate(seq, self.allocator.length(seq) + past_end)
        assert _snapshot(self.allocator, ["a", "b", "c"]) == before

    @rule(seq=SEQ_IDS)
    def free(self, seq: str) -> None:
        self.allocator.free(seq)
        self.slots.pop(seq, None)
        assert not self.allocator.has(seq)
        assert self.allocator.length(seq) == 0
        assert self.allocator.block_table(seq) == []

    @invariant()
    def every_block_is_either_free_or_owned_by_one_sequence(self) -> None:
        free = list(self.allocator._free)
        owned = [b for seq in self.slots for b in self.allocator.block_table(seq)]
        assert len(set(free)) == len(free), f"free list holds a block twice: {free}"
        assert len(set(owned)) == len(owned), f"a block is owned twice: {owned}"
        assert not set(free) & set(owned), f"blocks both free and owned: {set(free) & set(owned)}"
        assert sorted(free + owned) == list(range(self.allocator.num_blocks)), "a block leaked"
        assert self.allocator.num_free_blocks == len(free)

    @invariant()
    def each_table_covers_exactly_its_length(self) -> None:
        bs = self.allocator.block_size
        for seq, slots in self.slots.items():
            assert self.allocator.length(seq) == len(slots)
            assert len(self.allocator.block_table(seq)) == _ceil_div(len(slots), bs)

    @invariant()
    def slots_are_unique_and_stay_where_append_put_them(self) -> None:
        bs = self.allocator.block_size
        every_slot = [slot for slots in self.slots.values() for slot in slots]
        assert len(set(every_slot)) == len(every_slot), "two live positions share a cache slot"
        for seq, slots in self.slots.items():
            table = self.allocator.block_table(seq)
            assert slots == [_expected_slot(table, pos, bs) for pos in range(len(slots))]


TestAllocatorMachine = AllocatorMachine.TestCase
TestAllocatorMachine.settings = settings(max_examples=300, stateful_step_count=30, deadline=None)


class PagedKVMachine(RuleBasedStateMachine):
    """Runner-like forward steps over a real cache, checked against contiguous per-sequence KV."""

    NUM_BLOCKS = 8
    HEAD_DIM = 4

    def __init__(self) -> None:
        super().__init__()
        self.keys: dict[str, torch.Tensor] = {}  # seq -> [length, kv_heads, head_dim]
        self.values: dict[str, torch.Tensor] = {}

    @initialize(
        block_size=st.integers(1, 4),
        kv_heads=st.integers(1, 2),
        group=st.integers(1, 3),
        sliding_window=st.none() | st.integers(1, 6),
        seed=st.integers(0, 2**16),
    )
    def create(self, block_size: int, kv_heads: int, group: int, sliding_window: int | None, seed: int) -> None:
        self.allocator = BlockAllocator(self.NUM_BLOCKS, block_size)
        self.kv_heads, self.q_heads, self.sliding_window = kv_heads, kv_heads * group, sliding_window
        self.generator = torch.Generator().manual_seed(seed)
        shape = (self.NUM_BLOCKS, block_size, kv_heads, self.HEAD_DIM)
        # Garbage rather than zeros: anything attention reads past a sequence's end must be masked.
        self.key_cache = 100 * torch.randn(shape, generator=self.generator)
        self.value_cache = 100 * torch.randn(shape, generator=self.generator)

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator)

    @rule(steps=st.dictionaries(SEQ_IDS, st.integers(1, 5), min_size=1))
    def forward(self, steps: dict[str, int]) -> None:
        batch_seqs, starts, slots = [], [], []
        for seq, n in steps.items():
            start = self.allocator.length(seq)
            try:
                slots.extend(self.allocator.append(seq, n))
            except OutOfKVBlocks:
                continue
            batch_seqs.append(seq)
            starts.append(start)
        if not batch_seqs:
            return
        query_lens = [steps[seq] for seq in batch_seqs]
        new_keys = self._randn(sum(query_lens), self.kv_heads, self.HEAD_DIM)  # [tokens, kv_heads, head_dim]
        new_values = self._randn(sum(query_lens), self.kv_heads, self.HEAD_DIM)
        queries = self._randn(sum(query_lens), self.q_heads, self.HEAD_DIM)  # [tokens, q_heads, head_dim]
        batch = AttentionBatch.build(
            [self.allocator.block_table(seq) for seq in batch_seqs],
            [self.allocator.length(seq) for seq in batch_seqs],
            query_lens,
            slots,
            self.sliding_window,
        )
        write_kv_cache(new_keys, new_values, self.key_cache, self.value_cache, batch.slot_mapping)
        scale = self.HEAD_DIM**-0.5
        out = paged_attention(queries, self.key_cache, self.value_cache, batch, scale)

        row = 0
        for seq, start, n in zip(batch_seqs, starts, query_lens):
            empty = torch.empty(0, self.kv_heads, self.HEAD_DIM)
            self.keys[seq] = torch.cat((self.keys.get(seq, empty), new_keys[row : row + n]))
            self.values[seq] = torch.cat((self.values.get(seq, empty), new_values[row : row + n]))
            rows = slice(row, row + n)
            expected = self._contiguous_attention(queries[rows], self.keys[seq], self.values[seq], start, scale)
            torch.testing.assert_close(out[rows], expected, msg=f"sequence {seq}, positions {start}..{start + n - 1}")
            row += n

    def _contiguous_attention(
        self,
        query: torch.Tensor,  # [n, q_heads, head_dim], positions start .. start + n - 1
        keys: torch.Tensor,  # [length, kv_heads, head_dim], positions 0 .. length - 1
        values: torch.Tensor,
        start: int,
        scale: float,
    ) -> torch.Tensor:  # [n, q_heads, head_dim]
        group = self.q_heads // self.kv_heads
        q_pos = torch.arange(start, start + query.shape[0])[:, None]
        k_pos = torch.arange(keys.shape[0])[None, :]
        mask = k_pos <= q_pos  # [n, length]
        if self.sliding_window is not None:
            mask &= k_pos > q_pos - self.sliding_window
        # query head h reads kv head h // group, as in every GQA checkpoint
        k = keys.repeat_interleave(group, dim=1).transpose(0, 1)  # [q_heads, length, head_dim]
        v = values.repeat_interleave(group, dim=1).transpose(0, 1)
        out = F.scaled_dot_product_attention(query.transpose(0, 1), k, v, attn_mask=mask, scale=scale)
        return out.transpose(0, 1)

    @precondition(lambda self: self.keys)
    @rule(data=st.data())
    def roll_back(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(sorted(self.keys)), label="seq")
        length = data.draw(st.integers(0, self.keys[seq].shape[0]), label="length")
        self.allocator.truncate(seq, length)
        self.keys[seq] = self.keys[seq][:length]
        self.values[seq] = self.values[seq][:length]

    @precondition(lambda self: self.keys)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(sorted(self.keys)), label="seq")
        self.allocator.free(seq)
        del self.keys[seq], self.values[seq]

    @invariant()
    def every_live_position_reads_back_its_own_key_and_value(self) -> None:
        bs = self.allocator.block_size
        flat_keys = self.key_cache.view(-1, self.kv_heads, self.HEAD_DIM)
        flat_values = self.value_cache.view(-1, self.kv_heads, self.HEAD_DIM)
        for seq, keys in self.keys.items():
            table = self.allocator.block_table(seq)
            slots = torch.tensor([_expected_slot(table, pos, bs) for pos in range(keys.shape[0])], dtype=torch.int64)
            assert torch.equal(flat_keys[slots], keys), f"sequence {seq}: a key was overwritten"
            assert torch.equal(flat_values[slots], self.values[seq]), f"sequence {seq}: a value was overwritten"


TestPagedKVMachine = PagedKVMachine.TestCase
TestPagedKVMachine.settings = settings(max_examples=100, stateful_step_count=25, deadline=None)
