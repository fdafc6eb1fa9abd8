"""Automatic prefix caching in-process: a request that starts with tokens an earlier one committed skips
computing their KV, and its output is what it is without the cache, greedy and seeded, with and
without speculation (splitspec.models.prefix_cache)."""

from __future__ import annotations

import pytest

from splitspec import LLM, SamplingParams
from splitspec.metrics import Counter

SHARED = [(7 * i) % 200 + 3 for i in range(45)]  # two full blocks of 16, and 13 tokens more
PROMPTS = [SHARED + [100 + i, 50 + i] for i in range(4)]
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
SEEDED = [SamplingParams(temperature=0.9, max_tokens=24, ignore_eos=True, seed=30 + i) for i in range(4)]
SPECS = {"plain": None, "ngram": {"method": "ngram", "num_speculative_tokens": 3, "adaptive": False}}


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
def uncached(tiny_llama) -> dict[str, tuple[list[list[int]], list[list[int]]]]:
    outputs = {}
    for name, spec in SPECS.items():
        llm = LLM(str(tiny_llama), speculative_config=spec, enable_prefix_caching=False)
        outputs[name] = (_outputs(llm, GREEDY), _outputs(llm, SEEDED))
        assert _counter(llm, "splitspec_prefix_cache_queries") is None  # no cache, no series
    return outputs


@pytest.mark.parametrize("name", list(SPECS))
def test_output_with_the_prefix_cache_is_output_without_it(tiny_llama, uncached, name):
    llm = LLM(str(tiny_llama), speculative_config=SPECS[name])
    assert _outputs(llm, GREEDY) == uncached[name][0]
    assert _outputs(llm, SEEDED) == uncached[name][1]
    # each of the later prompts found the first's two full blocks, twice over
    assert _counter(llm, "splitspec_prefix_cache_hits") >= 2 * 3 * 32
    assert _counter(llm, "splitspec_prefix_cache_queries") == 2 * sum(len(p) for p in PROMPTS)


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
