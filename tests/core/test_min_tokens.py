"""min_tokens: the target may not end the output early, and speculation still gives plain decoding's
output, greedy and seeded (splitspec.token_ban)."""

from __future__ import annotations

import pytest
import torch

from splitspec import LLM, SamplingParams
from splitspec.errors import SplitspecError
from splitspec.models.runner import ForwardInput
from splitspec.token_ban import TokenBan

EOS = 2  # the tiny checkpoints' eos_token_id
MAX_TOKENS = 24
SMALL_KV = 1 << 20


def token_prompt(ids: list[int]) -> dict:
    return {"prompt_token_ids": ids}


@pytest.fixture(scope="module")
def plain(tiny_llama) -> LLM:
    return LLM(str(tiny_llama), kv_cache_memory_bytes=SMALL_KV)


def test_the_ban_covers_the_positions_before_min_tokens_and_nothing_else() -> None:
    ban = TokenBan.for_request(SamplingParams(min_tokens=3, stop_token_ids=[7, 900]), 5, {EOS})
    assert ban == TokenBan((EOS, 7, 900), 8)
    logits = torch.zeros(4, 10)
    ban.apply(logits, 6)  # rows score positions 6..9; the ban holds below 8
    assert logits[:2, [EOS, 7]].isinf().all() and not logits[2:].isinf().any()
    assert not logits[:, [0, 1, 3, 4, 5, 6, 8, 9]].isinf().any()  # 900 is past the vocabulary: nothing to ban
    assert TokenBan.for_request(SamplingParams(min_tokens=3, ignore_eos=True), 5, {EOS}) is None
    assert TokenBan.for_request(SamplingParams(), 5, {EOS}) is None
    tree = torch.zeros(5, 10)  # a tree's rows score the position after each token's own path
    ban.apply(tree, 6, [-1, -1, 0, 2])  # depths 1, 1, 2, 3: rows score positions 6, 7, 7, 8, 9
    assert tree[:3, EOS].isinf().all() and not tree[3:].isinf().any()


@pytest.mark.parametrize("bad", [-1, 1.5, True, 17])
def test_min_tokens_must_be_a_count_up_to_max_tokens(bad) -> None:
    with pytest.raises(SplitspecError, match="min_tokens"):
        SamplingParams(min_tokens=bad, max_tokens=16)


def _greedy(**kwargs) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=MAX_TOKENS, **kwargs)


def _outputs(llm: LLM, prompt: list[int], params: list[SamplingParams]) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate([token_prompt(prompt)] * len(params), params, use_tqdm=False)]


@pytest.fixture(scope="module")
def speculative(tiny_llama) -> dict[str, LLM]:
    """n-grams, and the target drafting for itself: it drafts EOS where the ban holds, which the
    target, banned, must reject."""
    llms = {}
    for name, method, extra in (
        ("ngram", "ngram", {}),
        ("draft_model", "draft_model", {"model": str(tiny_llama)}),
        ("draft_model_trees", "draft_model", {"model": str(tiny_llama), "tree_width": 3}),
    ):
        spec = {"method": method, "num_speculative_tokens": 4, "adaptive": False, **extra}
        llms[name] = LLM(str(tiny_llama), speculative_config=spec, kv_cache_memory_bytes=SMALL_KV)
    return llms


def test_eos_waits_for_min_tokens_and_speculation_gives_plain_decoding_s_output(eos_case, plain, speculative):
    prompt, ignoring_eos = eos_case
    at = ignoring_eos.index(EOS)
    assert _outputs(plain, prompt, [_greedy()])[0] == ignoring_eos[: at + 1]  # without min_tokens: ends at EOS
    params = _greedy(min_tokens=at + 3)
    held = _outputs(plain, prompt, [params])[0]
    assert held[:at] == ignoring_eos[:at] and EOS not in held[: at + 3] and len(held) >= at + 3
    # at EOS's place the target's best token other than EOS, from an independent forward pass
    ids = prompt + held[:at]
    logits = plain.runner.forward([ForwardInput("check", ids, 1)])[0].float().clone()
    plain.runner.free("check")
    assert int(logits.argmax()) == EOS
    logits[EOS] = float("-inf")
    assert held[at] == int(logits.argmax())
    seeded = [SamplingParams(temperature=0.9, max_tokens=MAX_TOKENS, min_tokens=at + 3, seed=s) for s in (5, 6, 7)]
    plain_seeded = _outputs(plain, prompt, seeded)
    for method, llm in speculative.items():
        outputs = llm.generate([token_prompt(prompt)], params, use_tqdm=False)
        assert outputs[0].outputs[0].token_ids == held, method
        if method != "ngram":
            stats = outputs[0].spec_stats
            assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens
        if method == "ngram":  # one-hot drafts: the target's own seeded draws decide every token
            assert _outputs(llm, prompt, seeded) == plain_seeded
        else:  # sampled drafts: the law is the target's, and seeds reproduce
            assert _outputs(llm, prompt, seeded) == _outputs(llm, prompt, seeded)
