"""The verifier's core without gRPC: shared batches, stale steps refused, eviction, release."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from splitspec import LLM, SamplingParams
from splitspec.config import RunnerConfig
from splitspec.drafts import Draft
from splitspec.errors import ServiceError
from splitspec.models.loader import load_runner
from verifier_svc.service import VerifierService

GREEDY = SamplingParams(temperature=0, max_tokens=None)
PROMPTS = {"a": [5, 6, 7, 8, 9, 5, 6], "b": [17, 3], "c": list(range(30, 70))}


def _run(coro):
    return asyncio.run(coro)


async def _decode(service: VerifierService, seq_id: str, steps: int) -> list[int]:
    out = []
    for _ in range(steps):
        seq = service.sequences[seq_id]
        outcome = await service.step(seq_id, len(seq.tokens), Draft())
        out.extend(outcome.token_ids)
    return out


def _plain(tiny_llama, prompt: list[int], n: int) -> list[int]:
    params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
    return (
        LLM(str(tiny_llama), kv_cache_memory_bytes=1 << 20)
        .generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0]
        .outputs[0]
        .token_ids
    )


def test_concurrent_sequences_share_batches_and_match_plain_decoding(tiny_llama):
    async def main():
        service = VerifierService(
            load_runner(tiny_llama, RunnerConfig(kv_cache_memory_bytes=1 << 20)), batch_window_s=0.005
        )
        service.start()
        for seq_id, prompt in PROMPTS.items():
            service.add(seq_id, prompt, GREEDY, seed=0)
        outputs = await asyncio.gather(*(_decode(service, s, 10) for s in PROMPTS))
        await service.close()
        return outputs

    outputs = _run(main())
    assert outputs == [_plain(tiny_llama, p, 10) for p in PROMPTS.values()]


def test_stale_step_is_refused_not_applied(tiny_llama):
    async def main():
        service = VerifierService(load_runner(tiny_llama, RunnerConfig(kv_cache_memory_bytes=1 << 20)))
        service.start()
        service.add("a", PROMPTS["a"], GREEDY, seed=0)
        await service.step("a", len(PROMPTS["a"]), Draft())
        before = list(service.sequences["a"].tokens)
        with pytest.raises(ServiceError) as err:
            await service.step("a", len(PROMPTS["a"]), Draft([1, 2], [None, None]))
        await service.close()
        return before, service.sequences["a"].tokens, err.value

    before, after, error = _run(main())
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION and "stale" in error.message
    assert after == before


def test_idle_sequences_are_evicted_when_the_cache_is_short_and_output_is_unchanged(tiny_llama):
    async def main():
        # 16 blocks of 4 tokens: the three prompts plus growth do not fit at once
        runner = load_runner(tiny_llama, RunnerConfig(block_size=4, kv_cache_memory_bytes=2 * 2 * 4 * 2 * 16 * 4 * 16))
        service = VerifierService(runner, batch_window_s=0.0)
        service.start()
        for seq_id, prompt in PROMPTS.items():
            service.add(seq_id, prompt, GREEDY, seed=0)
        outputs = {}
        for seq_id in ("c", "a", "b", "c", "a"):  # interleaved: each step may need another's blocks
            outputs.setdefault(seq_id, []).extend(await _decode(service, seq_id, 6))
        for seq_id in list(service.sequences):
            await service.release(seq_id)
        free, total = runner.num_free_blocks, runner.allocator.num_blocks
        await service.close()
        return outputs, free, total, service.num_evictions

    outputs, free, total, evictions = _run(main())
    assert evictions > 0
    for seq_id, tokens in outputs.items():
        assert tokens == _plain(tiny_llama, PROMPTS[seq_id], len(tokens))
    assert free == total


def test_admission_is_refused_when_full(tiny_llama):
    service = VerifierService(load_runner(tiny_llama, RunnerConfig(kv_cache_memory_bytes=1 << 20)), max_num_seqs=1)
    service.add("a", [1, 2, 3], GREEDY, seed=0)
    with pytest.raises(ServiceError) as err:
        service.add("b", [1, 2, 3], GREEDY, seed=0)
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_drafts_made_here_are_the_ngram_proposer_s_and_keep_plain_output(tiny_llama):
    """VerifyStep.local_draft: the verifier drafts by n-gram lookup over the sequence's own tokens,
    exactly the drafts a `--method ngram` proposer would send, and output stays plain decoding's."""
    from proposer_svc.ngram import NgramProposer
    from splitspec.drafts import DraftRequest
    from verifier_svc.local_drafts import LocalDraftSpec

    prompt = [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6, 7]
    spec = LocalDraftSpec(num_tokens=4, prompt_lookup_min=1, prompt_lookup_max=3)
    reference = NgramProposer(1, 3)

    async def main():
        service = VerifierService(load_runner(tiny_llama, RunnerConfig(kv_cache_memory_bytes=1 << 20)))
        service.start()
        service.add("s", prompt, GREEDY, seed=0)
        out, drafted = [], 0
        while len(out) < 24:
            tokens = list(service.sequences["s"].tokens)
            expected = reference.propose([DraftRequest("s", tokens, 4)])[0].token_ids
            outcome = await service.step("s", len(tokens), Draft(), spec)
            assert outcome.num_drafted == len(expected)
            drafted += outcome.num_drafted
            out.extend(outcome.token_ids)
        with pytest.raises(ServiceError) as both:
            await service.step("s", len(service.sequences["s"].tokens), Draft([5], [None]), spec)
        with pytest.raises(ServiceError) as bad:
            await service.step("s", len(service.sequences["s"].tokens), Draft(), LocalDraftSpec(4, 3, 2))
        await service.release("s")
        await service.close()
        return out[:24], drafted, both.value, bad.value

    out, drafted, both, bad = _run(main())
    assert out == _plain(tiny_llama, prompt, 24)
    assert drafted > 0, "the repeated prompt gives the lookup something to draft"
    assert (
        both.code == grpc.StatusCode.INVALID_ARGUMENT
        and "at most one of drafts, local_draft and remote_draft" in str(both)
    )
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT and "prompt_lookup_min <= prompt_lookup_max" in str(bad)


def test_pipelined_steps_run_one_after_another_and_keep_plain_output(tiny_llama):
    """VerifyStep.pipelined: steps sent together, before any result, each build on what the one before
    committed; drafted here or not, the output is plain decoding's."""
    from verifier_svc.local_drafts import LocalDraftSpec

    prompt = [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6, 7]
    specs = [LocalDraftSpec(3, 1, 3), None, LocalDraftSpec(2, 1, 3), LocalDraftSpec(3, 1, 3), None, None]

    async def main():
        service = VerifierService(load_runner(tiny_llama, RunnerConfig(kv_cache_memory_bytes=1 << 20)))
        service.start()
        service.add("s", prompt, GREEDY, seed=0)
        sent = [service.step("s", len(prompt), Draft(), spec, pipelined=True) for spec in specs]
        outcomes = await asyncio.gather(*sent)
        await service.close()
        return outcomes

    outcomes = _run(main())
    built_on = [o.committed_len for o in outcomes]
    lengths = [len(o.token_ids) for o in outcomes]
    assert built_on == [len(prompt) + sum(lengths[:i]) for i in range(len(outcomes))]
    assert [o.num_drafted for o in outcomes][1::3] == [0, 0], "a step without local_draft drafts nothing"
    assert sum(o.num_drafted for o in outcomes) > 0
    out = [t for o in outcomes for t in o.token_ids]
    assert out == _plain(tiny_llama, prompt, len(out))


def test_a_pipelined_step_verifies_its_drafts_only_after_the_tokens_it_assumed(tiny_llama):
    """VerifyStep.assumed_token_ids: drafts made ahead for an outcome of the steps before; when those
    steps commit something else, the step verifies no drafts and still commits plain decoding's token."""
    prompt = [5, 6, 7, 8, 9, 5, 6]
    plain = _plain(tiny_llama, prompt, 8)

    async def main():
        service = VerifierService(load_runner(tiny_llama, RunnerConfig(kv_cache_memory_bytes=1 << 20)))
        service.start()
        service.add("s", prompt, GREEDY, seed=0)
        first = service.step("s", len(prompt), Draft(), pipelined=True)
        right = service.step("s", len(prompt), Draft(plain[1:3], [None, None]), pipelined=True, assumed=plain[:1])
        wrong = service.step("s", len(prompt), Draft(plain[4:6], [None, None]), pipelined=True, assumed=plain[:2])
        outcomes = await asyncio.gather(first, right, wrong)
        with pytest.raises(ServiceError) as unpipelined:
            await service.step("s", len(service.sequences["s"].tokens), Draft(), assumed=[1])
        await service.close()
        return outcomes, unpipelined.value

    (first, right, wrong), unpipelined = _run(main())
    assert (right.num_drafted, right.num_accepted) == (2, 2), "the first step committed the assumed token"
    assert wrong.num_drafted == 0, "the steps before committed 4 tokens, not the 2 assumed"
    assert first.token_ids + right.token_ids + wrong.token_ids == plain[:5]
    assert unpipelined.code == grpc.StatusCode.INVALID_ARGUMENT and "pipelined" in unpipelined.message


def test_a_pipelined_step_refuses_lengths_the_verifier_has_not_reached_and_stops_at_the_context(tiny_llama):
    from verifier_svc.local_drafts import LocalDraftSpec

    async def main():
        service = VerifierService(
            load_runner(tiny_llama, RunnerConfig(kv_cache_memory_bytes=1 << 20, max_model_len=16))
        )
        service.start()
        prompt = [5, 6, 7, 5, 6, 7, 5, 6, 7, 5, 6, 7, 5]
        service.add("s", prompt, GREEDY, seed=0)
        with pytest.raises(ServiceError) as ahead:
            await service.step("s", len(prompt) + 1, Draft(), pipelined=True)
        near_the_end = []
        with pytest.raises(ServiceError) as full:
            while True:  # 8 drafts asked each time: no more than the context leaves are drafted
                tokens = len(service.sequences["s"].tokens)
                outcome = await service.step("s", 0, Draft(), LocalDraftSpec(8, 1, 3), pipelined=True)
                near_the_end.append((tokens, outcome.num_drafted))
        await service.close()
        return ahead.value, near_the_end, full.value, service.sequences["s"].tokens

    ahead, near_the_end, full, tokens = _run(main())
    assert ahead.code == grpc.StatusCode.FAILED_PRECONDITION and "stale" in ahead.message
    assert near_the_end and all(drafted <= 16 - length for length, drafted in near_the_end)
    assert full.code == grpc.StatusCode.OUT_OF_RANGE and "context" in full.message
    assert len(tokens) >= 16


def test_a_step_waiting_for_its_turn_when_the_sequence_is_released_is_refused_and_leaves_nothing(tiny_llama):
    from verifier_svc.local_drafts import LocalDraftSpec

    async def main():
        service = VerifierService(load_runner(tiny_llama, RunnerConfig(kv_cache_memory_bytes=1 << 20)))
        service.start()
        service.add("s", PROMPTS["a"], GREEDY, seed=0)
        first = asyncio.ensure_future(service.step("s", len(PROMPTS["a"]), Draft(), pipelined=True))
        waiting = asyncio.ensure_future(
            service.step("s", len(PROMPTS["a"]), Draft(), LocalDraftSpec(3, 1, 3), pipelined=True)
        )
        await asyncio.sleep(0)
        await service.release("s")
        results = await asyncio.gather(first, waiting, return_exceptions=True)
        await service.close()
        return results[1], service

    refused, service = _run(main())
    assert isinstance(refused, ServiceError) and refused.code == grpc.StatusCode.NOT_FOUND
    assert not service.sequences and not service.local_drafter._indexes
