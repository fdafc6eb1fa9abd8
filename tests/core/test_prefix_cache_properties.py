"""The prefix cache's bookkeeping under random starts, rounds, rollbacks and frees of sequences whose
tokens often share prefixes (splitspec.models.block_allocator, splitspec.models.prefix_cache).

Each cache slot remembers what was written there: the tokens from position 0 through the one whose
KV it holds, which is what that KV depends on. The machine then checks what the verifier relies on:
every position a sequence holds reads the KV of its own tokens, whether the sequence computed it or
took a cached block; blocks are accounted for exactly; and a prefix computed once is found again.
"""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from splitspec.errors import OutOfKVBlocks
from splitspec.models.block_allocator import BlockAllocator
from splitspec.models.prefix_cache import block_keys

SEQ_IDS = st.sampled_from(["a", "b", "c"])
TOKENS = st.lists(st.sampled_from([1, 2]), min_size=1, max_size=10)  # two tokens: prefixes repeat


class PrefixCacheMachine(RuleBasedStateMachine):
    """`tokens[seq]` are a live sequence's committed tokens; the cache holds KV for all but the last,
    as the verifier leaves it after a round (Verifier.rollback)."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: dict[str, list[int]] = {}
        self.written: dict[int, tuple[int, ...]] = {}  # slot -> the tokens its KV was computed from

    @initialize(num_blocks=st.integers(2, 10), block_size=st.integers(1, 4))
    def create(self, num_blocks: int, block_size: int) -> None:
        self.allocator = BlockAllocator(num_blocks, block_size, prefix_caching=True)

    def _pass(self, seq: str, tokens: list[int], drafts: list[int]) -> bool:
        """A verify pass: feed what the cache lacks and the drafts; False if it does not fit."""
        cached = self.allocator.length(seq)
        fed = tokens[cached:] + drafts
        try:
            slots = self.allocator.append(seq, len(fed))
        except OutOfKVBlocks:
            return False
        history = tokens + drafts
        for i, slot in enumerate(slots):
            self.written[slot] = tuple(history[: cached + i + 1])
        return True

    @precondition(lambda self: len(self.tokens) < 3)
    @rule(seq=SEQ_IDS, prompt=TOKENS)
    def start(self, seq: str, prompt: list[int]) -> None:
        if seq in self.tokens:
            return
        cache, bs = self.allocator.prefix_cache, self.allocator.block_size
        found = 0
        for key in block_keys(prompt[:-1], bs):
            if cache.lookup(key) is None:
                break
            found += 1
        assert self.allocator.reuse_prefix(seq, prompt) == found * bs, "a cached block of the prefix was not taken"
        assert found * bs <= len(prompt) - 1, "the last prompt token must still be computed"
        if not self._pass(seq, prompt, []):
            self.allocator.free(seq)
            return
        self.tokens[seq] = prompt
        self._commit(seq, [])

    @rule(seq=SEQ_IDS, drafts=st.lists(st.sampled_from([1, 2]), max_size=4), data=st.data())
    def round(self, seq: str, drafts: list[int], data: st.DataObject) -> None:
        if seq not in self.tokens:
            return
        if not self._pass(seq, self.tokens[seq], drafts):
            self.allocator.truncate(seq, len(self.tokens[seq]) - 1)
            return
        accepted = data.draw(st.integers(0, len(drafts)), label="accepted")
        self._commit(seq, drafts[:accepted] + [data.draw(st.sampled_from([1, 2]), label="correction")])

    def _commit(self, seq: str, new: list[int]) -> None:
        self.tokens[seq] = self.tokens[seq] + new
        self.allocator.truncate(seq, len(self.tokens[seq]) - 1)
        self.allocator.cache_prefix(seq, self.tokens[seq])

    @rule(seq=SEQ_IDS, data=st.data())
    def cut_back(self, seq: str, data: st.DataObject) -> None:
        """The sequence goes on from fewer of its tokens (its later ones to be replaced): a block it is
        cut into will be written again, so it must leave the cache, and one others share cannot be cut."""
        if seq not in self.tokens or len(self.tokens[seq]) < 2:
            return
        keep = data.draw(st.integers(1, len(self.tokens[seq]) - 1), label="tokens kept")
        bs, table = self.allocator.block_size, self.allocator.block_table(seq)
        cut_into = table[(keep - 1) // bs] if (keep - 1) % bs else None
        shared = cut_into is not None and sum(cut_into in self.allocator.block_table(s) for s in self.tokens) > 1
        before = (self.allocator.length(seq), list(table), self.allocator.num_free_blocks)
        try:
            self.allocator.truncate(seq, keep - 1)
        except ValueError:
            assert shared, "a cut into a block no other sequence holds was refused"
            after = (self.allocator.length(seq), self.allocator.block_table(seq), self.allocator.num_free_blocks)
            assert after == before, "a refused cut changed the allocator"
            return
        assert not shared, "a block other sequences read was cut into"
        self.tokens[seq] = self.tokens[seq][:keep]

    @rule(seq=SEQ_IDS)
    def free(self, seq: str) -> None:
        self.allocator.free(seq)
        self.tokens.pop(seq, None)

    @invariant()
    def every_held_position_reads_the_kv_of_its_own_tokens(self) -> None:
        bs = self.allocator.block_size
        for seq, tokens in self.tokens.items():
            table = self.allocator.block_table(seq)
            assert self.allocator.length(seq) == len(tokens) - 1
            for pos in range(len(tokens) - 1):
                slot = table[pos // bs] * bs + pos % bs
                assert self.written.get(slot) == tuple(tokens[: pos + 1]), f"{seq} position {pos}"

    @invariant()
    def cached_blocks_hold_the_tokens_their_keys_name(self) -> None:
        cache = self.allocator.prefix_cache
        bs = self.allocator.block_size
        for block, key in cache._keys.items():
            content = self.written.get(block * bs + bs - 1)
            assert content is not None and len(content) % bs == 0
            assert block_keys(list(content), bs)[-1] == key

    @invariant()
    def every_block_is_free_parked_or_held(self) -> None:
        free = list(self.allocator._free)
        parked = list(self.allocator.prefix_cache._parked)
        held = {b for seq in self.tokens for b in self.allocator.block_table(seq)}
        assert not set(free) & set(parked) and not (set(free) | set(parked)) & held
        assert sorted(free + parked + sorted(held)) == list(range(self.allocator.num_blocks)), "a block leaked"
        assert all(self.allocator.prefix_cache.holds(b) for b in parked)
        assert self.allocator.num_free_blocks == len(free) + len(parked)


TestPrefixCacheMachine = PrefixCacheMachine.TestCase
TestPrefixCacheMachine.settings = settings(max_examples=300, stateful_step_count=30, deadline=None)


def test_a_prompt_seen_before_starts_after_its_cached_blocks_and_is_counted():
    allocator = BlockAllocator(8, 4, prefix_caching=True)
    prompt = list(range(10, 21))  # 11 tokens: two full blocks before the last token
    allocator.append("first", len(prompt))
    allocator.truncate("first", len(prompt) - 1)
    allocator.cache_prefix("first", prompt)
    first_blocks = allocator.block_table("first")[:2]
    allocator.free("first")
    assert allocator.num_free_blocks == 8  # parked blocks count as free
    assert allocator.reuse_prefix("again", prompt) == 8
    assert allocator.block_table("again") == first_blocks  # the first's blocks, in order
    assert allocator.reuse_prefix("other", [10, 11, 12, 99, 14, 15, 16, 17, 18]) == 0
    assert (allocator.prefix_cache.queries, allocator.prefix_cache.hits) == (20, 8)


def test_parked_blocks_are_evicted_least_recently_used_and_forgotten():
    allocator = BlockAllocator(3, 2, prefix_caching=True)
    for seq, prompt in (("x", [1, 2, 3]), ("y", [4, 5, 6])):
        allocator.append(seq, 3)
        allocator.truncate(seq, 2)
        allocator.cache_prefix(seq, prompt)
        allocator.free(seq)
    allocator.append("z", 4)  # two blocks: the free one, then x's, parked first
    assert allocator.reuse_prefix("x again", [1, 2, 3]) == 0
    assert allocator.reuse_prefix("y again", [4, 5, 6]) == 2


def test_a_block_cut_into_leaves_the_cache_before_it_is_written_again():
    allocator = BlockAllocator(4, 3, prefix_caching=True)
    first = [1, 2, 1, 2, 1]
    allocator.append("s", 5)
    allocator.truncate("s", 4)
    allocator.cache_prefix("s", first)  # block 0 holds 1, 2, 1
    allocator.truncate("s", 1)  # goes on from [1, 2]: positions 1.. are written again
    allocator.append("s", 3)
    allocator.truncate("s", 3)
    allocator.cache_prefix("s", [1, 2, 2, 2])
    assert allocator.reuse_prefix("t", first) == 0  # 1, 2, 1 is nowhere now
    assert allocator.reuse_prefix("u", [1, 2, 2, 2]) == 3
