"""A speculator beside the target (serve-verifier --speculative-config): the verifier's EAGLE-3 head
drafts in the pass thread from states that never leave the process, and output stays plain
decoding's, whatever ran before on the sequence."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from e2e_requests import PROMPTS

from splitspec import LLM, SamplingParams
from splitspec.config import RunnerConfig
from splitspec.drafts import Draft, HiddenStates
from splitspec.entrypoints.verifier_head import build_local_speculator
from splitspec.errors import ServiceError, SplitspecError
from splitspec.models.loader import load_runner
from verifier_svc.local_drafts import LocalDraftSpec
from verifier_svc.service import StepOutcome, VerifierService

GREEDY = SamplingParams(temperature=0, max_tokens=None)
K = 3
HEAD_STEP = LocalDraftSpec(K, 0, 0, speculator=True)
NGRAM_STEP = LocalDraftSpec(K, 1, 3)
TOKENS = 24


def _service(target: Path, head: Path | None, kv_cache_bytes: int = 4 << 20) -> VerifierService:
    runner = load_runner(target, RunnerConfig(kv_cache_memory_bytes=kv_cache_bytes))
    speculator = None
    if head is not None:
        config = {"model": str(head), "num_speculative_tokens": K}
        speculator = build_local_speculator(config, target, runner.vocab_size, "cpu", 8, 16)
    service = VerifierService(runner, speculator=speculator)
    service.start()
    return service


def _plain(target: Path, prompt: list[int], n: int) -> list[int]:
    params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
    return LLM(str(target)).generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0].outputs[0].token_ids


async def _decode(service: VerifierService, seq_id: str, specs: list[LocalDraftSpec | None]) -> list[StepOutcome]:
    outcomes = []
    for spec in specs:
        seq = service.sequences[seq_id]
        outcomes.append(await service.step(seq_id, len(seq.tokens), Draft(), spec))
    return outcomes


def _tokens(outcomes: list[StepOutcome]) -> list[int]:
    return [t for o in outcomes for t in o.token_ids]


def test_the_head_drafts_in_the_verifier_and_output_is_plain_decoding_s(tiny_llama_8_layers, eagle3_head):
    """Four sequences stepping at once share passes and one batched call of the head: from the second
    round on every round drafts K, some accept several and some reject, and no state leaves."""

    async def main():
        service = _service(tiny_llama_8_layers, eagle3_head)
        for i, prompt in enumerate(PROMPTS):
            service.add(f"s{i}", prompt, GREEDY, seed=0)
        runs = await asyncio.gather(*(_decode(service, f"s{i}", [HEAD_STEP] * 12) for i in range(len(PROMPTS))))
        traits = service.speculator.traits
        await asyncio.gather(*(service.release(f"s{i}") for i in range(len(PROMPTS))))
        await service.close()
        return runs, traits

    runs, traits = asyncio.run(main())
    assert traits.method == "eagle3" and traits.hidden_states == HiddenStates.ALL and traits.hidden_layers == (2, 4, 5)
    for prompt, outcomes in zip(PROMPTS, runs):
        tokens = _tokens(outcomes)
        assert tokens == _plain(tiny_llama_8_layers, prompt, len(tokens))
        assert outcomes[0].num_drafted == 0, "the first pass gives the head its first states"
        assert all(o.num_drafted == K for o in outcomes[1:])
        assert all(o.hidden_state is None for o in outcomes)
    accepted = sum(o.num_accepted for run in runs for o in run)
    drafted = sum(o.num_drafted for run in runs for o in run)
    assert 0 < accepted < drafted, f"{accepted} of {drafted}"
    assert any(o.num_accepted >= 2 for run in runs for o in run)


def test_a_sequence_that_ran_without_the_head_or_lost_its_cache_drafts_again(tiny_llama_8_layers, eagle3_head):
    """A sequence first drafted by n-grams, or not at all, re-prefills at its first head step (its earlier
    passes kept no states); one whose cache is evicted re-prefills too. Each drafts from the next
    round on, and output stays plain decoding's."""

    async def main():
        service = _service(tiny_llama_8_layers, eagle3_head, kv_cache_bytes=224 << 10)
        service.add("a", PROMPTS[0], GREEDY, seed=0)
        service.add("b", PROMPTS[2], GREEDY, seed=0)
        before = await _decode(service, "a", [NGRAM_STEP, None, NGRAM_STEP])
        switched = await _decode(service, "a", [HEAD_STEP] * 4)
        interleaved = {"a": [], "b": []}
        for seq_id in (
            "b",
            "a",
            "b",
            "a",
            "b",
            "a",
        ):  # the cache (7 blocks of 16 tokens) holds one of them: each evicts the other
            interleaved[seq_id] += await _decode(service, seq_id, [HEAD_STEP, HEAD_STEP])
        evictions = service.num_evictions
        for seq_id in ("a", "b"):
            await service.release(seq_id)
        free, total = service.num_free_blocks, service.runner.allocator.num_blocks
        await service.close()
        return before, switched, interleaved, evictions, free, total

    before, switched, interleaved, evictions, free, total = asyncio.run(main())
    a = _tokens(before) + _tokens(switched) + _tokens(interleaved["a"])
    assert a == _plain(tiny_llama_8_layers, PROMPTS[0], len(a))
    assert _tokens(interleaved["b"]) == _plain(tiny_llama_8_layers, PROMPTS[2], len(_tokens(interleaved["b"])))
    assert switched[0].num_drafted == 0 and all(o.num_drafted == K for o in switched[1:])
    assert evictions > 0
    for outcomes in interleaved.values():  # a re-prefill feeds the head every row again: it drafts at once
        assert all(o.num_drafted == K for o in outcomes[1:])
    assert free == total


def test_head_steps_draft_nothing_without_a_head_and_are_refused_for_a_proposer_s_sequence(
    tiny_llama_8_layers, eagle3_head
):
    async def main():
        bare = _service(tiny_llama_8_layers, None)
        bare.add("s", PROMPTS[1], GREEDY, seed=0)
        outcomes = await _decode(bare, "s", [HEAD_STEP] * 3)
        await bare.close()
        service = _service(tiny_llama_8_layers, eagle3_head)
        service.add("p", PROMPTS[1], GREEDY, seed=0, hidden_states=HiddenStates.ALL, hidden_layers=(2, 4, 5))
        with pytest.raises(ServiceError) as refused:
            await _decode(service, "p", [HEAD_STEP])
        await service.close()
        return outcomes, refused.value

    outcomes, refused = asyncio.run(main())
    assert [o.num_drafted for o in outcomes] == [0, 0, 0]
    assert _tokens(outcomes) == _plain(tiny_llama_8_layers, PROMPTS[1], len(_tokens(outcomes)))
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT and "go to a proposer" in str(refused)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"model": "[ngram]", "num_speculative_tokens": 3}, "reads the target's hidden states"),
        ({"num_speculative_tokens": 3}, 'needs "model"'),
    ],
)
def test_only_a_head_that_reads_the_target_s_states_drafts_beside_it(tiny_llama, config, message):
    with pytest.raises(SplitspecError, match=message):
        build_local_speculator(config, tiny_llama, 256, "cpu", 8, 16)
