"""Client deadlines as the internal services keep them (splitspec.rpc.time_limits): checked on arrival,
and a sequence still held when its limit passes is released by the service itself. The end-to-end
case, a frozen gateway, is in tests/services/test_services_e2e.py."""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest

from proposer_svc.ngram import NgramProposer
from proposer_svc.service import ProposerService
from splitspec import SamplingParams
from splitspec.config import RunnerConfig
from splitspec.drafts import Draft
from splitspec.errors import ServiceError
from splitspec.models.loader import load_runner
from splitspec.rpc.time_limits import Expiries, check_time_limit, time_left
from verifier_svc.service import VerifierService


@pytest.mark.parametrize("seconds", [-1.0, math.nan, math.inf, -math.inf])
def test_a_limit_that_is_no_time_is_refused_by_its_field(seconds):
    with pytest.raises(ServiceError) as refused:
        check_time_limit("start.time_limit_s", seconds)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.message.startswith("start.time_limit_s must be")


async def eventually(condition, timeout_s: float = 10.0) -> bool:
    """Polls the condition on the running loop until it holds (True) or the timeout passes (False)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def test_zero_is_no_limit_and_what_is_sent_is_the_time_left():
    assert check_time_limit("f", 0.0) is None and check_time_limit("f", 2.5) == 2.5
    assert time_left(math.inf, 10.0) == 0.0
    assert time_left(12.5, 10.0) == 2.5
    assert time_left(9.0, 10.0) == 1e-3, "a deadline already reached is still sent as a limit, never as none"


def test_each_sequence_expires_once_when_its_first_limit_passes_unless_cancelled():
    async def main():
        expired: list[str] = []
        expiries = Expiries(expired.append)
        expiries.arm("a", 0.05)
        expiries.arm("a", 10.0)  # the deadline does not move
        expiries.arm("b", 0.05)
        expiries.cancel("b")
        assert await eventually(lambda: expired == ["a"])
        await asyncio.sleep(0.05)  # b had the same limit: it would have expired with a
        return expired, len(expiries)

    assert asyncio.run(main()) == (["a"], 0)


def test_the_verifier_releases_a_sequence_at_its_limit_and_frees_its_blocks(tiny_llama):
    async def main():
        service = VerifierService(load_runner(tiny_llama, RunnerConfig(kv_cache_memory_bytes=1 << 20)))
        service.start()
        free = service.num_free_blocks
        greedy = SamplingParams(temperature=0, max_tokens=None)
        service.add("a", list(range(5, 40)), greedy, seed=0, time_limit_s=0.2)
        service.add("b", [5, 6, 7], greedy, seed=0)
        with pytest.raises(ServiceError) as refused:
            service.add("c", [5, 6], greedy, seed=0, time_limit_s=-1.0)
        await service.step("a", 35, Draft())
        await eventually(lambda: "a" not in service.sequences)
        left = set(service.sequences)
        await service.release("b")
        after = service.num_free_blocks
        await service.close()
        return free, left, after, refused.value

    free, left, after, refused = asyncio.run(main())
    assert left == {"b"}, "a, past its limit, was released; b, with none, stays"
    assert after == free
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT and "start.time_limit_s" in refused.message


def test_the_proposer_forgets_a_sequence_at_its_limit():
    async def main():
        service = ProposerService(NgramProposer(1, 3), num_speculative_tokens=3)
        service.start()
        step = dict(start=0, num_tokens=3, temperature=0.0, top_k=0, seed=0)
        await service.draft("a", committed_len=4, token_ids=[5, 6, 5, 6], time_limit_s=0.2, **step)
        await service.draft("b", committed_len=4, token_ids=[5, 6, 5, 6], **step)
        with pytest.raises(ServiceError) as refused:
            await service.draft("c", committed_len=2, token_ids=[5, 6], time_limit_s=math.nan, **step)
        await eventually(lambda: "a" not in service.contexts)
        held = set(service.contexts)
        await service.close()
        return held, refused.value

    held, refused = asyncio.run(main())
    assert held == {"b"}
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT and "draft.time_limit_s" in refused.message
