"""The batched engine commits exactly what the one-screen reference loop commits, sequence by sequence."""

from __future__ import annotations

import pytest

from splitspec import LLM, SamplingParams
from splitspec.engine.reference import generate_one
from splitspec.stop_checker import StopChecker

K = 3
PROMPTS = [
    [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6],
    [17, 3],
    list(range(30, 90)) + list(range(30, 50)),
    [100, 101, 102, 100, 101, 102, 100, 101, 102, 100, 101],
]


@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("method", ["ngram", "draft_model"])
def test_the_batched_engine_commits_what_the_reference_loop_commits(tiny_llama, tiny_drafts, method, temperature):
    spec = {"method": method, "num_speculative_tokens": K, "adaptive": False}
    if method == "draft_model":
        spec["model"] = str(tiny_drafts["llama"])
    llm = LLM(str(tiny_llama), speculative_config=spec)
    params = [
        SamplingParams(temperature=temperature, max_tokens=40, ignore_eos=True, seed=1000 + i)
        for i in range(len(PROMPTS))
    ]
    batched = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)

    stop_checker = StopChecker(set(), llm.runner.max_model_len, None)
    for prompt, p, out in zip(PROMPTS, params, batched):
        one = generate_one(llm.runner, llm.engine.proposer, prompt, p, p.seed, K, stop_checker)
        assert out.outputs[0].token_ids == one.output_token_ids
        assert out.spec_stats == one.stats
    drafted = sum(o.spec_stats.num_draft_tokens for o in batched)
    accepted = sum(o.spec_stats.num_accepted_tokens for o in batched)
    assert 0 < accepted < drafted, "the comparison must cover accepted and rejected drafts"
