"""Automatic prefix caching in-process: a request that starts with tokens an earlier one committed skips
computing their KV, and its output is what it is without the cache, greedy and seeded, with every
drafter (splitspec.models.prefix_cache)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fitted_heads import write_fitted_mlp_speculator

from splitspec import LLM, SamplingParams
from splitspec.metrics import Counter

SHARED = [(7 * i) % 200 + 3 for i in range(45)]  # two full blocks of 16, and 13 tokens more
PROMPTS = [SHARED + [100 + i, 50 + i] for i in range(4)]
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
SEEDED = [SamplingParams(temperature=0.9, max_tokens=24, ignore_eos=True, seed=30 + i) for i in range(4)]
DRAFTERS = ["plain", "ngram", "draft_model", "suffix", "mlp_speculator", "eagle3"]


def _spec(name: str, tiny_llama: Path, heads: dict[str, Path]) -> dict | None:
    """Each drafter at a fixed K: n-grams and suffix trees draft the repeats, the target drafts for itself,
    and the heads are fitted to the target's own text (EAGLE-3's to the 8-layer target it serves)."""
    fixed = {"num_speculative_tokens": 3, "adaptive": False}
    return {
        "plain": None,
        "ngram": {"method": "ngram", **fixed},
        "draft_model": {"method": "draft_model", "model": str(tiny_llama), **fixed},
        "suffix": {"method": "suffix", **fixed},
        "mlp_speculator": {"model": str(heads.get("mlp_speculator")), "num_speculative_tokens": 3, "adaptive": False},
        "eagle3": {"method": "eagle3", "model": str(heads.get("eagle3")), **fixed},
    }[name]


def _counter(llm: LLM, name: str) -> float | None:
    found = [m for m in llm.get_metrics() if m.name == name]
    return found[0].value if found and isinstance(found[0], Counter) else None


def _outputs(llm: LLM, params) -> list[list[int]]:
    """The first prompt alone, then the rest in one batch: they find its blocks."""
    first = llm.generate(
        [{"prompt_token_ids": PROMPTS[0]}], params if not isinstance(params, list) else params[0], use_tqdm=False
    )
    rest = llm.generate(
        [{"prompt_token_ids": p} for p in PROMPTS[1:]],
        params if not isinstance(params, list) else params[1:],
        use_tqdm=False,
    )
    return [o.outputs[0].token_ids for o in first + rest]


@pytest.fixture(scope="module")
def heads(tiny_llama, eagle3_head, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("prefix_caching_heads")
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    return {
        "mlp_speculator": write_fitted_mlp_speculator(folder / "mlp", tiny_llama, PROMPTS, greedy),
        "eagle3": eagle3_head,
    }


@pytest.mark.parametrize("name", DRAFTERS)
def test_output_with_the_prefix_cache_is_output_without_it(tiny_llama, tiny_llama_8_layers, heads, name):
    target = tiny_llama_8_layers if name == "eagle3" else tiny_llama
    spec = _spec(name, tiny_llama, heads)
    uncached = LLM(str(target), speculative_config=spec, enable_prefix_caching=False)
    expected = (_outputs(uncached, GREEDY), _outputs(uncached, SEEDED))
    assert _counter(uncached, "splitspec_prefix_cache_queries") is None  # no cache, no series
    llm = LLM(str(target), speculative_config=spec)
    assert (_outputs(llm, GREEDY), _outputs(llm, SEEDED)) == expected
    looked_up, found = (_counter(llm, f"splitspec_prefix_cache_{n}") for n in ("queries", "hits"))
    if name != "eagle3":  # each later prompt found the first's two full blocks, twice over
        assert looked_up == 2 * sum(len(p) for p in PROMPTS) and found >= 2 * 3 * 32
    else:  # an EAGLE head attends over every state of the prompt: its first pass computes them all
        assert looked_up == found == 0


def test_a_repeated_prompt_is_found_block_for_block_and_counted(tiny_llama):
    llm = LLM(str(tiny_llama))
    llm.generate([{"prompt_token_ids": PROMPTS[0]}], GREEDY, use_tqdm=False)
    hits = _counter(llm, "splitspec_prefix_cache_hits")
    again = llm.generate([{"prompt_token_ids": PROMPTS[1]}], GREEDY, use_tqdm=False)
    assert _counter(llm, "splitspec_prefix_cache_hits") - hits == 32  # the shared 45 tokens' two full blocks
    cached = [m for m in llm.get_metrics() if m.name == "splitspec_prefix_cache_blocks"][0].value
    assert cached >= (len(PROMPTS[0]) + 24 - 1) // 16  # every full block of both sequences' committed tokens
    assert (
        again[0].outputs[0].token_ids
        == LLM(str(tiny_llama), enable_prefix_caching=False)
        .generate([{"prompt_token_ids": PROMPTS[1]}], GREEDY, use_tqdm=False)[0]
        .outputs[0]
        .token_ids
    )


def test_prompt_logprobs_score_every_prompt_token_even_when_its_prefix_is_cached(tiny_llama):
    """A request for its prompt's logprobs computes the whole prompt: cached blocks would skip rows."""
    params = SamplingParams(temperature=0, max_tokens=2, prompt_logprobs=1)
    llm = LLM(str(tiny_llama))
    llm.generate([{"prompt_token_ids": PROMPTS[0]}], GREEDY, use_tqdm=False)
    scored = llm.generate([{"prompt_token_ids": PROMPTS[1]}], params, use_tqdm=False)[0].prompt_logprobs
    fresh = LLM(str(tiny_llama), enable_prefix_caching=False)
    expected = fresh.generate([{"prompt_token_ids": PROMPTS[1]}], params, use_tqdm=False)[0].prompt_logprobs
    assert len(scored) == len(PROMPTS[1]) and scored[0] is None
    for got, want, token in zip(scored[1:], expected[1:], PROMPTS[1][1:]):
        assert got[token].logprob == pytest.approx(want[token].logprob, abs=1e-5)
