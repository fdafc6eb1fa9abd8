"""logprobs in-process: each output token's log-probability under the target's raw logits, its rank
and the top tokens', the same with speculation as without, and what an independent pass gives
(splitspec.token_logprobs)."""

from __future__ import annotations

import pytest
import torch

from splitspec import LLM, SamplingParams
from splitspec.errors import SplitspecError
from splitspec.models.runner import ForwardInput
from splitspec.token_logprobs import Logprob, token_logprobs

EOS = 2  # the tiny checkpoints' eos_token_id
PROMPTS = [[5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6], [17, 3], [100, 101, 102, 100, 101, 102, 100, 101]]
TOP = 3


def test_each_token_has_its_log_probability_its_rank_and_the_top_tokens_beside_it() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0], [3.0, 0.0, 0.0, 0.0]])
    expected = torch.log_softmax(logits, dim=-1)
    first, second = token_logprobs(logits, [2, 0], 2)
    assert list(first) == [2, 1] and first[2] == Logprob(pytest.approx(expected[0, 2].item()), 2)
    assert first[1] == Logprob(pytest.approx(expected[0, 1].item()), 1)
    assert list(second)[0] == 0 and second[0].rank == 1 and len(second) == 2  # a tie for second: either
    assert token_logprobs(logits, [3, 1], 0) == [
        {3: Logprob(pytest.approx(expected[0, 3].item()), 4)},
        {1: Logprob(pytest.approx(expected[1, 1].item()), 2)},
    ]


@pytest.mark.parametrize("bad", [-1, 21, True, 1.0])
def test_logprobs_must_be_a_count_up_to_twenty(bad) -> None:
    with pytest.raises(SplitspecError, match="logprobs"):
        SamplingParams(logprobs=bad)


def _generate(llm: LLM, params: SamplingParams) -> list:
    return [o.outputs[0] for o in llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)]


def _assert_same_logprobs(got: list[dict[int, Logprob]], want: list[dict[int, Logprob]]) -> None:
    assert len(got) == len(want)
    for position, (a, b) in enumerate(zip(got, want)):
        assert list(a) == list(b), position
        for token in a:
            assert a[token].rank == b[token].rank, (position, token)
            assert a[token].logprob == pytest.approx(b[token].logprob, abs=1e-4), (position, token)


@pytest.fixture(scope="module")
def plain(tiny_llama) -> LLM:
    return LLM(str(tiny_llama))


@pytest.mark.parametrize(
    "spec",
    [
        {"method": "ngram", "num_speculative_tokens": 4, "adaptive": False},
        {"method": "draft_model", "num_speculative_tokens": 4, "adaptive": False},  # the target drafts itself
        # a tree's kept path is not its first rows: its tokens are ranked likeliest first, siblings between
        {"method": "draft_model", "num_speculative_tokens": 6, "adaptive": False, "tree_width": 3},
    ],
    ids=["ngram", "draft_model", "draft_model_trees"],
)
def test_speculation_gives_plain_decoding_s_logprobs_and_an_independent_pass_agrees(tiny_llama, plain, spec) -> None:
    if spec["method"] == "draft_model":
        spec = spec | {"model": str(tiny_llama)}
    greedy = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, logprobs=TOP)
    expected = _generate(plain, greedy)
    speculative = LLM(str(tiny_llama), speculative_config=spec)
    got = _generate(speculative, greedy)
    for prompt, out, want in zip(PROMPTS, got, expected):
        assert out.token_ids == want.token_ids
        _assert_same_logprobs(out.logprobs, want.logprobs)
        ids = prompt + want.token_ids
        rows = plain.runner.forward([ForwardInput("check", ids[:-1], len(want.token_ids))]).float()
        plain.runner.free("check")
        _assert_same_logprobs(want.logprobs, token_logprobs(rows, want.token_ids, TOP))
        assert all(entry[t].rank == 1 for entry, t in zip(want.logprobs, want.token_ids))  # greedy: the argmax
    seeded = SamplingParams(temperature=0.9, max_tokens=20, ignore_eos=True, logprobs=0, seed=3)
    if spec["method"] == "ngram":  # one-hot drafts: the same samples, so the same logprobs
        for out, want in zip(_generate(speculative, seeded), _generate(plain, seeded)):
            assert out.token_ids == want.token_ids
            _assert_same_logprobs(out.logprobs, want.logprobs)


def test_a_stop_mid_round_keeps_one_entry_per_output_token(tiny_llama, plain) -> None:
    spec = {"method": "draft_model", "model": str(tiny_llama), "num_speculative_tokens": 4, "adaptive": False}
    full = _generate(plain, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[0].token_ids
    params = SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[full[6]], logprobs=1)
    for llm in (plain, LLM(str(tiny_llama), speculative_config=spec)):
        out = _generate(llm, params)[0]
        assert out.token_ids == full[: full.index(full[6]) + 1]
        assert len(out.logprobs) == len(out.token_ids)


def test_logprobs_are_the_raw_target_s_even_where_min_tokens_bans_a_token(plain, eos_case) -> None:
    prompt, ignoring_eos = eos_case
    at = ignoring_eos.index(EOS)
    params = SamplingParams(temperature=0, max_tokens=at + 4, min_tokens=at + 2, logprobs=1)
    out = plain.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0].outputs[0]
    entry = out.logprobs[at]
    assert entry[EOS].rank == 1 and entry[out.token_ids[at]].rank == 2  # EOS was the raw argmax, banned


def test_prompt_logprobs_are_transformers_log_softmax_and_the_same_with_speculation(tiny_llama, plain) -> None:
    """vLLM's prompt_logprobs: None for the first token, then each prompt token's from the first pass,
    against transformers' float32 log-softmax of the same tokens (within 1e-4), batched with sequences
    that do not ask for them, and unchanged by speculation."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32).eval()
    asking = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, prompt_logprobs=TOP, logprobs=0)
    params = [asking, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True), asking]
    speculative = LLM(
        str(tiny_llama), speculative_config={"method": "ngram", "num_speculative_tokens": 3, "adaptive": False}
    )
    requests = [{"prompt_token_ids": p} for p in PROMPTS]
    outputs = plain.generate(requests, params, use_tqdm=False)
    assert outputs[1].prompt_logprobs is None
    for llm_outputs in (outputs, speculative.generate(requests, params, use_tqdm=False)):
        for prompt, out in zip(PROMPTS[::2], llm_outputs[::2]):
            assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
            with torch.no_grad():
                reference = torch.log_softmax(model(torch.tensor([prompt])).logits[0].float(), -1)
            for position, entry in enumerate(out.prompt_logprobs[1:], start=1):
                token = prompt[position]
                assert entry[token].logprob == pytest.approx(reference[position - 1, token].item(), abs=1e-4)
                assert entry[token].rank == int((reference[position - 1] > reference[position - 1, token]).sum()) + 1
                assert len(entry) in (TOP, TOP + 1)
            assert out.outputs[0].token_ids == outputs[PROMPTS.index(prompt)].outputs[0].token_ids
