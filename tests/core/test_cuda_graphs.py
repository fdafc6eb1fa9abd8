"""The padding CUDA graphs need, checked on the CPU: a pass padded to its bucket (as a graph replays
it, here run eagerly under Triton's interpreter) gives the rows the eager pass gives, writes its
padding only to the scratch block, and keeps greedy output token for token. tests/core/test_gpu.py
captures and replays real graphs on a GPU."""

from __future__ import annotations

import pytest
import torch

from splitspec import LLM, SamplingParams
from splitspec.models.cuda_graphs import GRAPH_MAX_QUERY, GraphShape, bucket
from splitspec.models.pass_layout import PassLayout
from splitspec.models.runner import ForwardInput
from splitspec_kernels.triton_support import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="Triton is not installed")


@pytest.mark.parametrize("n, expected", [(1, 1), (2, 2), (3, 4), (16, 16), (17, 32), (1000, 1024)])
def test_a_bucket_is_the_next_power_of_two(n, expected):
    assert bucket(n) == expected


def test_a_layout_s_bucket_pads_sequences_and_tokens_separately():
    layout = PassLayout(
        tokens=[1] * 9, positions=[], slots=[], block_tables=[[0]] * 3, seq_lens=[4, 2, 9], query_lens=[4, 2, 3],
        logit_rows=[], hidden_rows=[],
    )  # fmt: skip
    assert GraphShape.of(layout) == GraphShape(num_seqs=4, num_tokens=16)


def _runner(tiny_llama):
    llm = LLM(str(tiny_llama), kernel_backend="triton", dtype="float32")
    runner = llm.runner
    assert runner.graphs is None, "no graphs on the CPU unless a test asks for the padded path"
    return llm, runner


def _prefill(runner, prompts: dict[str, list[int]]) -> None:
    runner.forward([ForwardInput(seq_id, tokens, num_logits=1) for seq_id, tokens in prompts.items()])


def test_a_padded_pass_gives_the_eager_pass_s_rows_and_writes_padding_only_to_the_scratch_block(tiny_llama):
    _, eager = _runner(tiny_llama)
    _, padded = _runner(tiny_llama)
    padded.graphs = padded.pass_graphs(capture=False)
    prompts = {"a": list(range(3, 40)), "b": [7, 8, 9], "c": list(range(50, 71))}
    for runner in (eager, padded):
        _prefill(runner, prompts)  # 21- and 37-token queries: longer than a graph takes, so eager
    assert padded.graphs.num_captured == 0 and not padded.graphs._passes
    # a decode step, a verify pass of 5 tokens and one of 4, with hidden rows as EAGLE asks for them
    step = [
        ForwardInput("a", [11], num_logits=1),
        ForwardInput("b", [12, 13, 14, 15, 16], num_logits=5, num_hidden=2),
        ForwardInput("c", [17, 18, 19, 20], num_logits=4, num_hidden=4),
    ]
    scratch = padded.graphs.scratch_slot // padded.block_size
    for cache in padded.key_cache:
        cache[scratch] = float("nan")  # token 0's key can be all zeros: NaN shows any write
    before = [cache.clone() for cache in padded.key_cache]
    want_logits, want_hidden = eager.forward_with_hidden(step)
    got_logits, got_hidden = padded.forward_with_hidden(step)
    assert list(padded.graphs._passes) == [GraphShape(num_seqs=4, num_tokens=16)]
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_hidden, want_hidden, rtol=1e-5, atol=1e-5)
    for layer, (old, new) in enumerate(zip(before, padded.key_cache)):
        changed = (old != new).flatten(1).any(dim=1).nonzero().flatten().tolist()  # NaN != NaN: scratch
        owned = {b for seq in "abc" for b in padded.allocator.block_table(seq)}
        assert set(changed) <= owned | {scratch}, f"layer {layer} wrote outside the sequences' blocks"
        assert not new[scratch, 0].isnan().any(), "the 7 padding tokens write their keys to the scratch block"
        torch.testing.assert_close(new[: padded.allocator.num_blocks], eager.key_cache[layer][:-1])


def test_only_passes_of_short_queries_take_a_graph(tiny_llama):
    _, runner = _runner(tiny_llama)
    graphs = runner.pass_graphs(capture=False)

    def layout(query_lens: list[int]) -> PassLayout:
        tokens = [1] * sum(query_lens)
        return PassLayout(tokens, [], [], [], [0] * len(query_lens), query_lens, [], [])

    assert graphs.fits(layout([1] * 64)) and graphs.fits(layout([GRAPH_MAX_QUERY, 1]))
    assert not graphs.fits(layout([GRAPH_MAX_QUERY + 1]))
    assert not graphs.fits(layout([1] * (graphs.max_seqs + 1)))


@pytest.mark.parametrize(
    "method, temperature, batch",
    [
        ("ngram", 0.0, 4),
        ("ngram", 0.8, 4),
        pytest.param("ngram", 0.8, 1, marks=pytest.mark.slow),
        pytest.param("draft_model", 0.0, 4, marks=pytest.mark.slow),
    ],
)
def test_speculative_decoding_through_padded_passes_is_plain_decoding(
    tiny_llama, tiny_drafts, method, temperature, batch
):
    """Batched speculation with every short pass of the target padded to its bucket, against plain eager
    decoding: greedy token for token, and seeded sampling (one-hot ngram drafts) draw for draw."""
    prompts = [[5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6], [17, 3], list(range(30, 60)) * 2, [100, 101, 102] * 4][:batch]
    params = [
        SamplingParams(temperature=temperature, max_tokens=24, ignore_eos=True, seed=seed) for seed in range(batch)
    ]
    spec = {"method": method, "num_speculative_tokens": 3, "adaptive": False}
    if method == "draft_model":
        spec["model"] = str(tiny_drafts["llama"])
    plain = LLM(str(tiny_llama), dtype="float32")
    speculative = LLM(str(tiny_llama), speculative_config=spec, kernel_backend="triton", dtype="float32")
    speculative.runner.graphs = speculative.runner.pass_graphs(capture=False)

    def token_ids(llm: LLM) -> list[list[int]]:
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [o.outputs[0].token_ids for o in outputs]

    assert token_ids(speculative) == token_ids(plain)
    assert len(speculative.runner.graphs._passes) >= 2, "passes of several buckets"
