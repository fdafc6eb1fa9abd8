"""Which verifier a sequence starts on when verifiers cache prefixes (gateway_svc.prefix_routing)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from gateway_svc.prefix_routing import BLOCK_TOKENS, ROUTING_TOKENS, prefix_key, verifier_order


@dataclass
class Verifier:
    address: str
    load: float = 0.0


ADDRESSES = [f"10.0.0.{i}:50051" for i in range(1, 7)]


def test_requests_that_share_a_beginning_share_a_key_and_short_ones_have_none():
    system = list(range(300))
    assert prefix_key(system + [1, 2, 3]) == prefix_key(system + [9, 9]) is not None  # the first 256 tokens
    assert prefix_key(system[:40] + [1]) == prefix_key(system[:40] + [2])  # 2 whole blocks: the first 32 tokens
    assert prefix_key([5] + system[1:40]) != prefix_key(system[:40])
    assert prefix_key(list(range(BLOCK_TOKENS))) is None  # no whole block before the last token
    assert len(prefix_key(system)) == len(b"prefix:") + 8 * ROUTING_TOKENS


@given(prompt=st.lists(st.integers(0, 50_000), min_size=BLOCK_TOKENS + 1, max_size=400), data=st.data())
def test_every_gateway_picks_the_same_verifier_for_a_key_whatever_order_it_lists_them_in(prompt, data):
    verifiers = [Verifier(a) for a in ADDRESSES]
    shuffled = data.draw(st.permutations(verifiers))
    assert verifier_order(verifiers, prefix_key(prompt))[0] is verifier_order(shuffled, prefix_key(prompt))[0]


def test_a_key_keeps_its_verifier_when_another_joins_or_leaves():
    verifiers = [Verifier(a) for a in ADDRESSES[:4]]
    keys = [prefix_key([k] * 40) for k in range(200)]
    before = {k: verifier_order(verifiers, k)[0].address for k in keys}
    after = {k: verifier_order(verifiers + [Verifier(ADDRESSES[4])], k)[0].address for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == ADDRESSES[4] for k in moved) and 0 < len(moved) < len(keys) / 2
    gone = verifiers[1:]
    assert all(verifier_order(gone, k)[0].address == before[k] for k in keys if before[k] != ADDRESSES[0])


def test_keys_spread_over_the_verifiers():
    verifiers = [Verifier(a) for a in ADDRESSES[:3]]
    chosen = [verifier_order(verifiers, prefix_key([k, k + 1] * 20))[0].address for k in range(300)]
    assert all(60 < chosen.count(a) < 140 for a in ADDRESSES[:3])


def test_a_loaded_verifier_is_passed_over_and_no_key_means_least_loaded():
    verifiers = [Verifier(a, load) for a, load in zip(ADDRESSES[:3], (0.1, 0.5, 0.2))]
    key = next(
        prefix_key([k] * 40) for k in range(1000) if verifier_order(verifiers, prefix_key([k] * 40))[0].load == 0.2
    )
    verifiers[2].load = 0.4  # beyond the least loaded's 0.1 + 0.125
    order = verifier_order(verifiers, key)
    assert order[0] is verifiers[0] and order[1:] == [verifiers[2], verifiers[1]]  # then the rest by load
    assert [v.load for v in verifier_order(verifiers, None)] == [0.1, 0.4, 0.5]
