"""The engine with the Triton kernels forced on (the interpreter on the CPU) samples exactly as the
PyTorch path does: the batched rejection-sampling kernel uses the same seeded draws, and token trees
go through the Triton attention kernel's tree mask."""

from __future__ import annotations

import pytest

from splitspec import LLM, SamplingParams
from splitspec_kernels.triton_support import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="Triton is not installed")

PROMPTS = [
    [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6],
    [17, 3],
    [100, 101, 102, 100, 101, 102, 100, 101],
    list(range(30, 90)) + list(range(30, 50)),
]


def _record_trees(llm: LLM) -> list:
    """The results of the steps its verifier verifies as trees, as they come."""
    verify, trees = llm.engine.verifier.verify, []

    def recording(steps, *args, **kwargs):
        results = verify(steps, *args, **kwargs)
        trees.extend(r for r in results if r.path is not None)
        return results

    llm.engine.verifier.verify = recording
    return trees


@pytest.mark.parametrize(("method", "tree_width"), [("ngram", 1), ("draft_model", 1), ("ngram", 3)])
def test_seeded_sampling_is_identical_with_triton_kernels(method, tree_width, tiny_llama, tiny_drafts) -> None:
    spec = {"method": method, "num_speculative_tokens": 3, "adaptive": False, "tree_width": tree_width}
    if method == "draft_model":
        spec["model"] = str(tiny_drafts["llama"])
    params = [
        SamplingParams(temperature=t, top_k=k, top_p=p, seed=s, max_tokens=24, ignore_eos=True)
        for t, k, p, s in ((0.0, -1, 1.0, 1), (0.1, -1, 1.0, 1), (0.6, 20, 0.9, 2), (1.0, -1, 1.0, 3))
    ]
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    outputs = {}
    for backend in ("torch", "triton"):
        llm = LLM(str(tiny_llama), speculative_config=spec, kernel_backend=backend)
        assert llm.runner.kernels.name == backend
        trees = _record_trees(llm)
        results = llm.generate(prompts, params, use_tqdm=False)
        assert (len(trees) > 0) == (tree_width > 1), "a tree width verifies trees, and only it"
        outputs[backend] = [r.outputs[0].token_ids for r in results]
        drafted = sum(r.spec_stats.num_draft_tokens for r in results)
        accepted = sum(r.spec_stats.num_accepted_tokens for r in results)
        assert 0 < accepted < drafted, "both accepted and rejected drafts are needed for the test to mean anything"
    assert outputs["triton"] == outputs["torch"]
