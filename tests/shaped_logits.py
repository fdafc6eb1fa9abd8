"""Speculation over a target whose logits a request shapes (penalties, logit bias, min-p): the engines
that draft against it (the `plain` and `speculative` fixtures of tests/conftest.py) and the check that
their output is plain decoding's, for the tests of each."""

from __future__ import annotations

from pathlib import Path

from splitspec import LLM, SamplingParams

SMALL_KV = 1 << 20


def drafting_llms(target: Path) -> dict[str, LLM]:
    """n-grams, which draft the prompt's repetitions, and the target drafting for itself without the
    request's shaping, as chains and as trees (each row shaped by the tokens on its own path): all
    propose tokens the shaped target must judge."""
    llms = {}
    for name, method, extra in (
        ("ngram", "ngram", {"prompt_lookup_min": 1}),
        ("draft_model", "draft_model", {"model": str(target)}),
        ("draft_model_trees", "draft_model", {"model": str(target), "tree_width": 3, "num_speculative_tokens": 6}),
    ):
        spec = {"method": method, "num_speculative_tokens": 4, "adaptive": False, **extra}
        llms[name] = LLM(str(target), speculative_config=spec, kv_cache_memory_bytes=SMALL_KV)
    return llms


def outputs(llm: LLM, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[list[int]]:
    requests = [{"prompt_token_ids": p} for p in prompts]
    return [o.outputs[0].token_ids for o in llm.generate(requests, params, use_tqdm=False)]


def assert_speculation_is_plain_decoding(
    llms: dict[str, LLM],
    prompts: list[list[int]],
    greedy: SamplingParams,
    plain_greedy: list[list[int]],
    seeded: list[SamplingParams],
    plain_seeded: list[list[int]],
) -> None:
    """Greedy output is plain decoding's with every drafter, and drafts were made (and, drawn by the
    target itself, some accepted and some not); seeded output is plain decoding's with one-hot n-gram
    drafts (the target's own seeded draws decide every token) and reproduces with sampled drafts."""
    for method, llm in llms.items():
        results = llm.generate([{"prompt_token_ids": p} for p in prompts], greedy, use_tqdm=False)
        assert [o.outputs[0].token_ids for o in results] == plain_greedy, method
        drafted = sum(o.spec_stats.num_draft_tokens for o in results)
        accepted = sum(o.spec_stats.num_accepted_tokens for o in results)
        # n-gram repetitions are what penalties push down: they need only be drafted
        assert 0 < drafted if method == "ngram" else 0 < accepted < drafted, (method, accepted, drafted)
        if method == "ngram":
            assert outputs(llm, prompts, seeded) == plain_seeded
        else:
            assert outputs(llm, prompts, seeded) == outputs(llm, prompts, seeded)
