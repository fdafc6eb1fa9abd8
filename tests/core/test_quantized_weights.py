"""Quantized weights (splitspec.models.quantized_linear, gguf_weights): the products compute the
weights they claim, each row as if alone, the default model's GGUF blocks are the weights transformers
reads from it, and speculation reproduces the quantized target token for token and sample for sample."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from greedy_reference import assert_same_or_near_tie
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from splitspec import LLM, SamplingParams
from splitspec.errors import SplitspecError
from splitspec.models.gguf_weights import gguf_file_of, read_int4_blocks
from splitspec.models.loader import load_config
from splitspec.models.quantized_linear import Fp8Linear, Int4Linear, Int8Linear, quantize_linear
from splitspec.models.runner import ForwardInput

PROMPTS = [  # with repeated n-grams, so that prompt lookup finds matches
    [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6],
    [17, 3],
    list(range(30, 90)) + list(range(30, 50)),
    [100, 101, 102, 100, 101, 102, 100, 101, 102, 100, 101, 102, 100, 101],
]
GREEDY = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
SEEDED = [
    SamplingParams(temperature=t, top_p=p, seed=s, max_tokens=40, ignore_eos=True)
    for t, p, s in ((0.7, 1.0, 1), (1.0, 0.9, 2), (1.0, 1.0, 3), (0.4, 1.0, 4))
]


NEAR_TIE = {"int8": 0.0, "int4": 0.0, "fp8": 2**-4}
"""Where speculative and plain greedy output may part, relative to the top logit. An int8 or int4
target computes each row of a pass as if alone (its products, and its attention), so nowhere.
An fp8 product's sums depend on the batch's rows in their last bit, and the target rounds activations
to float8 (4 significant bits) before each product, which can turn that into a step of float8 at a
token the target all but ties."""


def _weight(out_features: int = 96, in_features: int = 128, seed: int = 0) -> torch.Tensor:
    return torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("quantization", ["int8", "int4", "fp8"])
def test_a_quantized_product_is_close_to_the_float_one_and_differs_from_it(quantization) -> None:
    weight, x = _weight(), torch.randn(5, 128)
    exact = x @ weight.T
    got = quantize_linear(weight, None, quantization)(x)
    relative = ((got - exact).norm() / exact.norm()).item()
    bound = {"int8": 0.02, "int4": 0.15, "fp8": 0.06}[quantization]
    assert 0 < relative < bound, relative
    assert got.dtype == x.dtype and got.shape == exact.shape


def test_int4_groups_keep_their_own_range() -> None:
    """One group of 32 with a huge range must not blur the others (per-group scales and zeros)."""
    weight = _weight(16, 64)
    weight[:, :32] *= 1000
    x = torch.zeros(1, 64)
    x[0, 32:] = 1
    got = Int4Linear.quantize(weight)(x)
    exact = x @ weight.T
    assert ((got - exact).abs().max() / exact.abs().max()).item() < 0.1


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 40), pick=st.integers(0, 39), seed=st.integers(0, 2**16))
def test_each_row_of_a_product_is_what_it_is_alone(rows: int, pick: int, seed: int) -> None:
    """A verify pass of K+1 rows must compute, per row, what a one-row decode step computes: else
    greedy speculation could pick a different token at a near-tie than plain decoding does. True of
    the int8 and int4 kernels; not of torch._scaled_mm (fp8), whose sums depend on the batch's rows in
    their last bit, which NEAR_TIE["fp8"] allows for."""
    weight = _weight(seed=seed)
    x = torch.randn(rows, 128, generator=torch.Generator().manual_seed(seed + 1))
    row = pick % rows
    for linear in (Int8Linear.quantize(weight), Int4Linear.quantize(weight)):
        assert torch.equal(linear(x)[row], linear(x[row : row + 1])[0])
    fp8 = Fp8Linear.quantize(weight)
    torch.testing.assert_close(fp8(x)[row], fp8(x[row : row + 1])[0], rtol=2**-7, atol=2**-7)


def test_the_default_model_s_gguf_blocks_are_the_weights_transformers_reads(default_model_path) -> None:
    """Every 4-bit projection of the bundled GGUF, decoded and put back in the checkpoint's row order,
    equals what transformers dequantized into the converted checkpoint, to the bit."""
    blocks = read_int4_blocks(gguf_file_of(default_model_path), load_config(default_model_path))
    converted = load_file(str(default_model_path / "model.safetensors"))
    config = load_config(default_model_path)
    assert len(blocks) == 7 * config.num_hidden_layers
    for name, held in blocks.items():
        assert torch.equal(held.dequantized(), converted[name]), name


@pytest.mark.parametrize("quantization", ["int8", "int4", "fp8"])
@pytest.mark.parametrize("method", ["ngram", "draft_model"])
def test_speculation_reproduces_the_quantized_target(tiny_llama, tiny_drafts, quantization, method) -> None:
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    float_plain = [o.outputs[0].token_ids for o in LLM(str(tiny_llama)).generate(prompts, GREEDY, use_tqdm=False)]
    plain = LLM(str(tiny_llama), quantization=quantization)
    expected = [o.outputs[0].token_ids for o in plain.generate(prompts, GREEDY, use_tqdm=False)]
    expected_samples = [o.outputs[0].token_ids for o in plain.generate(prompts, SEEDED, use_tqdm=False)]
    assert expected != float_plain  # the quantized target is another model: the check below can fail
    spec = {"method": method, "num_speculative_tokens": 3, "adaptive": False}
    if method == "draft_model":
        spec |= {"model": str(tiny_drafts["llama"]), "quantization": quantization}
    llm = LLM(str(tiny_llama), quantization=quantization, speculative_config=spec)
    greedy = llm.generate(prompts, GREEDY, use_tqdm=False)
    for prompt, out, own in zip(PROMPTS, greedy, expected):
        near_tie = NEAR_TIE[quantization]
        assert_same_or_near_tie(_RelativeLogits(plain.runner), prompt, out.outputs[0].token_ids, own, near_tie)
    assert sum(o.spec_stats.num_accepted_tokens for o in greedy) > 0
    sampled = [o.outputs[0].token_ids for o in llm.generate(prompts, SEEDED, use_tqdm=False)]
    if method == "ngram":  # one-hot drafts: the target's own seeded draws decide every token
        assert sampled == expected_samples
    else:  # a sampled draft changes which draws decide; the law is the target's, and seeds reproduce
        assert sampled == [o.outputs[0].token_ids for o in llm.generate(prompts, SEEDED, use_tqdm=False)]


class _RelativeLogits:
    """A runner called as transformers' models are, for greedy_reference's near-tie rule, with logits
    divided by the largest one's magnitude so that the rule's gap is relative."""

    def __init__(self, runner) -> None:
        self.runner = runner

    def __call__(self, ids: torch.Tensor) -> SimpleNamespace:
        try:
            logits = self.runner.forward([ForwardInput("near-tie", ids[0].tolist(), 1)]).float()
        finally:
            self.runner.free("near-tie")
        return SimpleNamespace(logits=(logits / logits.abs().max())[None])


def test_the_default_model_runs_on_its_shipped_blocks_and_speculation_reproduces_it(default_model_path) -> None:
    prompt = {"prompt_token_ids": list(range(1000, 1040)) * 2}
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    plain = LLM("default", quantization="gguf").generate([prompt], params, use_tqdm=False)[0]
    spec = {"method": "ngram", "num_speculative_tokens": 4, "adaptive": False}
    llm = LLM("default", quantization="gguf", speculative_config=spec)
    assert isinstance(llm.runner.layers[0].qkv, Int4Linear) and isinstance(llm.runner.lm_head, Int8Linear)
    out = llm.generate([prompt], params, use_tqdm=False)[0]
    assert out.outputs[0].token_ids == plain.outputs[0].token_ids
    assert out.spec_stats.num_accepted_tokens > 0


def test_bad_quantizations_are_refused_with_a_reason(tiny_llama, tiny_gpt2) -> None:
    with pytest.raises(SplitspecError, match="quantization must be one of int8, int4, gguf, fp8"):
        LLM(str(tiny_llama), quantization="fp4")
    with pytest.raises(SplitspecError, match="the one \\*.gguf file"):
        LLM(str(tiny_llama), quantization="gguf")
    with pytest.raises(SplitspecError, match="needs the native runner"):
        LLM(str(tiny_gpt2), quantization="int8")
    with pytest.raises(SplitspecError, match="for a draft model"):
        LLM(
            str(tiny_llama), speculative_config={"method": "ngram", "num_speculative_tokens": 2, "quantization": "int8"}
        )


def test_gguf_reads_the_one_file_beside_the_checkpoint(tmp_path: Path, default_model_path) -> None:
    assert gguf_file_of(default_model_path).name.endswith(".gguf")
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(SplitspecError, match="has 2"):
        gguf_file_of(tmp_path)
