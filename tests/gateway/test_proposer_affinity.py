"""Related requests meet on one proposer pod (gateway_svc.proposer_affinity), within load bounds."""

from __future__ import annotations

from dataclasses import dataclass

from gateway_svc.proposer_affinity import PROMPT_TAIL_TOKENS, affinity_key, pick_pod


@dataclass
class Pod:
    address: str
    num_sequences: int = 0


PODS = [Pod(f"10.0.0.{i}:50053") for i in range(4)]
KEYS = [affinity_key(f"user-{i}", []) for i in range(200)]


def test_a_key_keeps_its_pod_and_keys_spread_over_the_pods():
    chosen = [pick_pod(PODS, key) for key in KEYS]
    assert chosen == [pick_pod(list(reversed(PODS)), key) for key in KEYS]  # not the order they are listed in
    assert all(sum(c is pod for c in chosen) > 25 for pod in PODS)


def test_a_pod_leaving_moves_only_the_keys_it_had():
    before = {key: pick_pod(PODS, key) for key in KEYS}
    after = {key: pick_pod(PODS[1:], key) for key in KEYS}
    assert all(after[key] is before[key] for key in KEYS if before[key] is not PODS[0])


def test_a_loaded_pod_is_passed_over_for_the_next_one_the_key_prefers():
    key = KEYS[0]
    first = pick_pod(PODS, key)
    first.num_sequences = 3  # above twice the least loaded (0) plus two
    try:
        second = pick_pod(PODS, key)
        assert second is not first
        first.num_sequences = 2
        assert pick_pod(PODS, key) is first
    finally:
        first.num_sequences = 0


def test_without_a_session_prompts_that_end_alike_share_a_key():
    code = list(range(1000, 1100))
    assert affinity_key("", [1, 2, 3] + code) == affinity_key("", [7, 8] + code)
    assert affinity_key("", [1] + code[:-1]) != affinity_key("", [1] + code)
    assert len(code) > PROMPT_TAIL_TOKENS
    assert affinity_key("s", code) != affinity_key("", code) and pick_pod([], KEYS[0]) is None
