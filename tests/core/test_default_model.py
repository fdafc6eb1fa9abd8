"""The bundled default model (SmolLM2-135M-Instruct): real text, real tokenizer, greedy losslessness."""

from __future__ import annotations

import pytest
from greedy_reference import assert_same_or_near_tie, hf_greedy
from tiny_checkpoints import write_perturbed_copy
from transformers import AutoModelForCausalLM

from splitspec import LLM, SamplingParams

pytestmark = pytest.mark.default_model

MAX_TOKENS = 24
QUESTIONS = [
    "Write a Python function to calculate fibonacci numbers.",
    "What is the capital of France? Answer in one sentence.",
    "Rewrite this sentence in the passive voice: The cat chased the mouse around the garden.",
    "List three primary colors.",
    "Summarize: The quick brown fox jumps over the lazy dog. The dog did not react. The fox ran away.",
]
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def plain_llm(default_model_path):
    return LLM(str(default_model_path))


@pytest.fixture(scope="module")
def noisy_draft(default_model_path, tmp_path_factory):
    """A draft sharing the tokenizer that agrees with the target often but not always: the default
    model with Gaussian noise (10% of each tensor's spread) on every weight. Drafting with the target
    itself would have every draft accepted, and the test would not see a rejection."""
    return write_perturbed_copy(default_model_path, tmp_path_factory.mktemp("noisy_default"), scale=0.1)


@pytest.fixture(scope="module")
def prompts(plain_llm):
    return [plain_llm.apply_chat_template([{"role": "user", "content": q}]) for q in QUESTIONS]


@pytest.fixture(scope="module")
def references(default_model_path, plain_llm, prompts):
    hf = AutoModelForCausalLM.from_pretrained(str(default_model_path)).eval()
    tokenizer = plain_llm.get_tokenizer()
    ids = [tokenizer.encode(p) for p in prompts]
    plain = plain_llm.generate(prompts, GREEDY, use_tqdm=False)
    return hf, ids, [hf_greedy(hf, i, MAX_TOKENS) for i in ids], [o.outputs[0].token_ids for o in plain]


def test_default_model_plain_engine_matches_transformers(references):
    hf, ids, hf_outputs, plain = references
    for prompt_ids, got, expected in zip(ids, plain, hf_outputs):
        assert_same_or_near_tie(hf, prompt_ids, got, expected)


@pytest.mark.parametrize(
    "spec",
    [
        {
            "method": "ngram",
            "num_speculative_tokens": 5,
            "prompt_lookup_max": 4,
            "prompt_lookup_min": 1,
            "adaptive": False,
        },
        {"method": "ngram", "num_speculative_tokens": 1, "adaptive": False},
        {"method": "draft_model", "model": "noisy_draft", "num_speculative_tokens": 3, "adaptive": False},
    ],
    ids=["ngram-k5", "ngram-k1", "draft_model-k3"],
)
def test_default_model_speculative_greedy_is_lossless(spec, default_model_path, prompts, references, request):
    hf, ids, hf_outputs, plain = references
    if spec.get("model") == "noisy_draft":
        spec = dict(spec, model=str(request.getfixturevalue("noisy_draft")))
    outputs = LLM(str(default_model_path), speculative_config=spec).generate(prompts, GREEDY, use_tqdm=False)
    for prompt_ids, out, own, reference in zip(ids, outputs, plain, hf_outputs):
        assert out.prompt_token_ids == prompt_ids
        assert_same_or_near_tie(hf, prompt_ids, out.outputs[0].token_ids, own)
        assert_same_or_near_tie(hf, prompt_ids, out.outputs[0].token_ids, reference)
    drafted = sum(o.spec_stats.num_draft_tokens for o in outputs)
    accepted = sum(o.spec_stats.num_accepted_tokens for o in outputs)
    assert 0 < accepted < drafted, "the comparison must cover accepted and rejected drafts"


def test_default_model_text_and_stop_string(plain_llm, prompts):
    out = plain_llm.generate(
        prompts[0], SamplingParams(temperature=0, max_tokens=60, stop=["fibonacci("]), use_tqdm=False
    )[0]
    completion = out.outputs[0]
    assert completion.finish_reason == "stop" and completion.stop_reason == "fibonacci("
    assert "fibonacci(" not in completion.text and completion.text.strip()


def test_default_model_stops_at_eos(plain_llm, prompts):
    out = plain_llm.generate(prompts[1], SamplingParams(temperature=0, max_tokens=100), use_tqdm=False)[0]
    completion = out.outputs[0]
    assert completion.finish_reason == "stop"
    assert completion.token_ids[-1] in plain_llm.engine.stop_checker.eos_token_ids
    assert "Paris" in completion.text
