"""The batched engine commits exactly what the one-screen reference loop commits, sequence by sequence."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest
from fitted_heads import write_fitted_eagle, write_fitted_mlp_speculator

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
MAX_TOKENS = 40


def requests(temperature: float) -> list[SamplingParams]:
    return [
        SamplingParams(temperature=temperature, max_tokens=MAX_TOKENS, ignore_eos=True, seed=1000 + i)
        for i in range(len(PROMPTS))
    ]


@pytest.fixture(scope="module")
def drafter(tiny_llama, tiny_drafts, tmp_path_factory) -> Callable[[str, float], Path | None]:
    """(method, temperature) -> the checkpoint the method drafts with, if any. Heads that read the
    target's states are fitted to the text it writes for the test's requests (tests/fitted_heads.py)."""
    fitters = {"mlp_speculator": write_fitted_mlp_speculator, "eagle": write_fitted_eagle}

    @functools.cache
    def checkpoint(method: str, temperature: float) -> Path | None:
        if method == "draft_model":
            return tiny_drafts["llama"]
        if method in fitters:
            folder = tmp_path_factory.mktemp(f"{method}_at_{temperature}")
            return fitters[method](folder, tiny_llama, PROMPTS, requests(temperature))
        return None

    return checkpoint


@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("method", ["ngram", "draft_model", "mlp_speculator", "eagle"])
def test_the_batched_engine_commits_what_the_reference_loop_commits(tiny_llama, drafter, method, temperature):
    spec = {"method": method, "num_speculative_tokens": K, "adaptive": False}
    if (checkpoint := drafter(method, temperature)) is not None:
        spec["model"] = str(checkpoint)
    llm = LLM(str(tiny_llama), speculative_config=spec)
    params = requests(temperature)
    batched = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)

    stop_checker = StopChecker(set(), llm.runner.max_model_len, None)
    for prompt, p, out in zip(PROMPTS, params, batched):
        one = generate_one(llm.runner, llm.engine.proposer, prompt, p, p.seed, K, stop_checker)
        assert out.outputs[0].token_ids == one.output_token_ids
        assert out.spec_stats == one.stats
    drafted = sum(o.spec_stats.num_draft_tokens for o in batched)
    accepted = sum(o.spec_stats.num_accepted_tokens for o in batched)
    assert 0 < accepted < drafted, "the comparison must cover accepted and rejected drafts"
    if method in ("mlp_speculator", "eagle"):  # several accepted drafts: the state comes from a later row
        assert any(o.spec_stats.accepted_per_position[1] for o in batched), "no round accepted two drafts"
