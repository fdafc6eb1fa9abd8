"""Generation stops exactly where plain decoding would, even when a speculative round accepts tokens past it."""

from __future__ import annotations

import pytest

from splitspec import LLM, SamplingParams
from splitspec.errors import SplitspecError
from splitspec.sequence import Sequence
from splitspec.stop_checker import StopChecker

EOS = 2  # the tiny checkpoints' eos_token_id
K = 5
SMALL_KV = 1 << 20  # 128 blocks of 16 tokens for the tiny llama: plenty here, and quick to allocate
PROMPT = [17, 3, 99, 42]


def token_prompt(ids: list[int]) -> dict:
    return {"prompt_token_ids": ids}


def greedy(max_tokens: int | None = 24, **kwargs) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, **kwargs)


def generate_one(llm: LLM, prompt: list[int], params: SamplingParams):
    return llm.generate([token_prompt(prompt)], params, use_tqdm=False)[0].outputs[0]


@pytest.fixture(scope="module")
def plain(tiny_llama) -> LLM:
    return LLM(str(tiny_llama), kv_cache_memory_bytes=SMALL_KV)


@pytest.fixture(scope="module")
def self_drafting(tiny_llama) -> LLM:
    """The target drafts for itself, so greedy drafts are all accepted and every round emits K + 1 tokens
    (K fixed: adaptive K, pricing each draft at what a target pass costs, would rightly draft less)."""
    spec = {"method": "draft_model", "model": str(tiny_llama), "num_speculative_tokens": K, "adaptive": False}
    return LLM(str(tiny_llama), speculative_config=spec, kv_cache_memory_bytes=SMALL_KV)


@pytest.fixture(scope="module", params=["plain", "self_drafting"])
def llm(request) -> LLM:
    return request.getfixturevalue(request.param)


def first_new_token_mid_round(ids: list[int]) -> int:
    """A position p past the first round, not at a round's end when all K drafts are accepted, whose token is new."""
    for p in range(K + 2, len(ids)):
        if (p + 1) % (K + 1) != 0 and ids[p] not in ids[:p] and ids[p] != EOS:
            return p
    pytest.fail(f"no usable stop token in {ids}")


@pytest.mark.parametrize("max_tokens", [1, 2, K, K + 1, K + 2, 3 * K])
def test_max_tokens_is_exact_when_rounds_accept_every_draft(self_drafting, max_tokens):
    longer = generate_one(self_drafting, PROMPT, greedy(max_tokens=4 * K, ignore_eos=True))
    out = generate_one(self_drafting, PROMPT, greedy(max_tokens=max_tokens, ignore_eos=True))
    assert out.token_ids == longer.token_ids[:max_tokens]
    assert out.finish_reason == "length"


def test_self_drafting_accepts_every_draft(self_drafting):
    stats = self_drafting.generate([token_prompt(PROMPT)], greedy(max_tokens=4 * K, ignore_eos=True), use_tqdm=False)[
        0
    ].spec_stats
    assert stats.num_draft_tokens > 0
    assert stats.acceptance_rate == 1.0


def test_finish_reason_is_length_at_max_tokens(llm):
    out = generate_one(llm, PROMPT, greedy(max_tokens=7, ignore_eos=True))
    assert len(out.token_ids) == 7
    assert out.finish_reason == "length"
    assert out.stop_reason is None


def test_stop_token_id_ends_generation_at_that_token_even_mid_round(llm):
    ids = generate_one(llm, PROMPT, greedy(ignore_eos=True)).token_ids
    p = first_new_token_mid_round(ids)
    out = generate_one(llm, PROMPT, greedy(ignore_eos=True, stop_token_ids=[ids[p]]))
    assert out.token_ids == ids[: p + 1]
    assert out.finish_reason == "stop"
    assert out.stop_reason == ids[p]


def test_eos_stops_generation(eos_case, llm):
    prompt, ids = eos_case
    out = generate_one(llm, prompt, greedy())
    assert out.token_ids == ids[: ids.index(EOS) + 1]
    assert out.finish_reason == "stop"
    assert out.stop_reason is None


def test_ignore_eos_generates_past_eos(eos_case, llm):
    prompt, ids = eos_case
    out = generate_one(llm, prompt, greedy(ignore_eos=True))
    assert out.token_ids == ids
    assert out.finish_reason == "length"


def test_generation_stops_at_max_model_len(tiny_llama):
    llm = LLM(
        str(tiny_llama),
        max_model_len=16,
        kv_cache_memory_bytes=SMALL_KV,
        speculative_config={"method": "ngram", "num_speculative_tokens": K},
    )
    out = generate_one(llm, list(range(10, 22)), greedy(max_tokens=None, ignore_eos=True))
    assert len(out.token_ids) == 16 - 12
    assert out.finish_reason == "length"


def test_prompt_as_long_as_max_model_len_is_rejected(tiny_llama):
    llm = LLM(str(tiny_llama), max_model_len=16, kv_cache_memory_bytes=SMALL_KV)
    with pytest.raises(SplitspecError, match="prompt has 16 tokens, the model's context is 16; shorten the prompt"):
        llm.generate([token_prompt(list(range(10, 26)))], greedy(), use_tqdm=False)


def test_empty_prompt_is_rejected(plain):
    with pytest.raises(SplitspecError, match="the prompt is empty"):
        plain.generate([token_prompt([])], greedy(), use_tqdm=False)


def test_a_rejected_prompt_leaves_nothing_queued(plain):
    with pytest.raises(SplitspecError, match="the prompt is empty"):
        plain.generate([token_prompt(PROMPT), token_prompt([])], greedy(), use_tqdm=False)
    assert not plain.engine.has_unfinished()


def test_every_kv_block_is_free_after_generate(llm):
    prompts = [token_prompt(PROMPT), token_prompt(list(range(30, 70))), token_prompt([5, 6, 5, 6, 5])]
    params = [greedy(max_tokens=40, ignore_eos=True), greedy(max_tokens=3), greedy(stop_token_ids=list(range(256)))]
    llm.generate(prompts, params, use_tqdm=False)
    assert llm.runner.num_free_blocks == llm.runner.allocator.num_blocks
    drafter = getattr(llm.engine.proposer, "runner", None)
    if drafter is not None:
        assert drafter.num_free_blocks == drafter.allocator.num_blocks


# StopChecker on its own: one round's tokens committed one at a time.

HE, LLO, WOR, LD, BANG, AND, MORE = 3, 4, 5, 6, 7, 8, 9
WORDS = {HE: "he", LLO: "llo", WOR: " wor", LD: "ld", BANG: "!", AND: " and", MORE: " more"}


def detokenize(ids: list[int]) -> str:
    return "".join(WORDS[t] for t in ids)


def sequence(**params) -> Sequence:
    return Sequence("s", None, [MORE, MORE], SamplingParams(temperature=0, **params), seed=0)


def checker(max_model_len: int = 64) -> StopChecker:
    return StopChecker({EOS}, max_model_len, lambda ids, params: detokenize(ids))


def test_commit_appends_every_token_when_nothing_stops():
    seq = sequence(max_tokens=10)
    assert checker().commit(seq, [HE, LLO, WOR]) == 3
    assert seq.output_token_ids == [HE, LLO, WOR]
    assert not seq.finished


def test_commit_stops_at_max_tokens_in_the_middle_of_a_round():
    seq = sequence(max_tokens=3)
    assert checker().commit(seq, [HE, LLO, WOR, LD, BANG, AND]) == 3
    assert seq.output_token_ids == [HE, LLO, WOR]
    assert seq.finish_reason == "length"


def test_commit_stops_at_a_stop_token_in_the_middle_of_a_round():
    seq = sequence(stop_token_ids=[WOR])
    assert checker().commit(seq, [HE, LLO, WOR, LD, BANG]) == 3
    assert (seq.finish_reason, seq.stop_reason) == ("stop", WOR)


def test_the_stop_token_that_ends_an_output_is_text_only_with_include_stop_str_in_output():
    """vLLM's rule: the EOS or stop token id that stops an output is not part of its text."""
    for include, text in ((False, "hello"), (True, "hello wor")):
        seq, stops = sequence(stop_token_ids=[WOR], include_stop_str_in_output=include), checker()
        stops.commit(seq, [HE, LLO, WOR, LD])
        assert stops.output_text(seq) == text


def test_commit_stops_at_eos_unless_ignored():
    seq = sequence()
    assert checker().commit(seq, [HE, EOS, LLO]) == 2
    assert (seq.finish_reason, seq.stop_reason) == ("stop", None)
    seq = sequence(ignore_eos=True)
    assert checker().commit(seq, [HE, EOS, LLO]) == 3
    assert not seq.finished


def test_commit_stops_at_max_model_len():
    seq = sequence(max_tokens=None)
    assert checker(max_model_len=5).commit(seq, [HE, LLO, WOR, LD, BANG]) == 3
    assert seq.finish_reason == "length"


def test_stop_string_text_ends_before_it_even_when_it_starts_mid_token():
    seq = sequence(stop=["lo w"])  # spans "llo" and " wor"
    assert checker().commit(seq, [HE, LLO, WOR, LD, BANG]) == 3
    assert (seq.finish_reason, seq.stop_reason) == ("stop", "lo w")
    assert seq.output_token_ids == [HE, LLO, WOR]
    assert seq.text == "hel"


def test_stop_string_is_kept_with_include_stop_str_in_output():
    seq = sequence(stop=["lo w"], include_stop_str_in_output=True)
    checker().commit(seq, [HE, LLO, WOR, LD, BANG])
    assert seq.text == "hello w"


def test_the_first_stop_string_to_appear_stops_generation():
    seq = sequence(stop=[" more", "!"])
    assert checker().commit(seq, [HE, LLO, BANG, AND, MORE]) == 3
    assert seq.stop_reason == "!"
    assert seq.text == "hello"


def test_stop_strings_are_matched_in_the_output_only():
    seq = sequence(stop=[" more"])  # the prompt is " more more"
    assert checker().commit(seq, [HE, LLO]) == 2
    assert not seq.finished


def test_before_min_tokens_no_stop_string_or_stop_token_ends_the_output():
    seq = sequence(stop=["llo"], stop_token_ids=[WOR], min_tokens=4)
    assert checker().commit(seq, [HE, LLO, WOR, LD, BANG]) == 5  # "llo" and WOR come before min_tokens
    assert not seq.finished
    assert checker().commit(seq, [WOR, LLO]) == 1
    assert (seq.finish_reason, seq.stop_reason) == ("stop", WOR)


def test_a_stop_string_that_ends_at_min_tokens_or_later_stops_as_usual():
    seq = sequence(stop=["o wor", "!"], min_tokens=3)  # "o wor" ends with the third token, across the second
    assert checker().commit(seq, [HE, LLO, WOR, BANG]) == 3
    assert (seq.stop_reason, seq.text) == ("o wor", "hell")
    seq = sequence(stop=["llo"], min_tokens=3)  # found with the second token only: never looked for again
    assert checker().commit(seq, [HE, LLO, WOR, LD, BANG]) == 5
    assert not seq.finished
