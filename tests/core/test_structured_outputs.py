"""Structured output (xgrammar) under speculation: greedy output is plain constrained decoding's token for
token, sampled output has the constrained law, and drafts the grammar forbids are cut before the pass
(splitspec.output_grammar)."""

from __future__ import annotations

import itertools
import json
import re

import pytest
import torch
import xgrammar as xgr
from scipy.stats import chisquare
from tiny_checkpoints import write_perturbed_copy, write_tiny_checkpoint
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

import splitspec.output_grammar
from splitspec import LLM, SamplingParams
from splitspec.errors import SplitspecError
from splitspec.models.runner import ForwardInput
from splitspec.output_grammar import GrammarPlan
from splitspec.structured_outputs import StructuredOutputsParams

# -- what a request asks for ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({}, "exactly one of"),
        ({"regex": "a+", "choice": ["a"]}, "exactly one of"),
        ({"json": "{not json"}, "structured_outputs.json is not valid JSON"),
        ({"json": [1, 2]}, "must be a JSON schema"),
        ({"choice": "yes"}, "choice must be a list of non-empty strings"),
        ({"choice": ["yes", ""]}, "choice must be a list of non-empty strings"),
        ({"regex": ""}, "regex must be a non-empty string"),
    ],
)
def test_bad_structured_outputs_name_what_is_wrong(kwargs, words):
    with pytest.raises(SplitspecError, match=re.escape(words)):
        StructuredOutputsParams(**kwargs)


def test_structured_outputs_end_at_eos_so_ignore_eos_and_min_tokens_are_refused():
    for extra in ({"ignore_eos": True}, {"min_tokens": 2}):
        with pytest.raises(SplitspecError, match="ignore_eos and min_tokens cannot be set"):
            SamplingParams(structured_outputs=StructuredOutputsParams(regex="a+"), **extra)


# -- a tokenizer small enough to enumerate every outcome -----------------------------------------------

VOCAB = 8
LETTERS = "abcdefgh"  # token i is LETTERS[i]; "c" (2) is the tiny checkpoints' EOS
PROMPT = [3, 5, 3, 5, 3]
LENGTH = 3
ALPHA = 1e-3
NUM_SAMPLES = 4000
# at the first position the draft model (top 4: f, e, g, h) drafts mostly what this forbids (f, h), and
# puts its other mass on e and g where the target prefers a and b: the residual of a rejected forbidden
# draft is far from the target's masked p there, so the test below can tell the two rules apart
PATTERN = "[abdeg][abdefgh][abdefgh]"


@pytest.fixture(scope="module")
def letters_target(tmp_path_factory):
    path = write_tiny_checkpoint(
        tmp_path_factory.mktemp("letters"),
        vocab_size=VOCAB,
        hidden_size=32,
        num_heads=2,
        num_kv_heads=1,
        seed=3,
        init_std=0.15,
    )
    from tokenizers import Tokenizer, models

    words = Tokenizer(models.WordLevel(vocab={c: i for i, c in enumerate(LETTERS)}, unk_token="a"))
    PreTrainedTokenizerFast(tokenizer_object=words, eos_token="c").save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def letters_draft(tmp_path_factory, letters_target):
    return write_perturbed_copy(letters_target, tmp_path_factory.mktemp("letters_draft"), scale=1.0, seed=5)


@pytest.fixture(scope="module")
def constrained_law(letters_target) -> dict[tuple[int, ...], float]:
    """Each outcome's probability under the target with the pattern's mask at every position, from
    transformers' forward pass and a matcher of xgrammar's own."""
    model = AutoModelForCausalLM.from_pretrained(str(letters_target)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(letters_target))
    compiled = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=VOCAB, stop_token_ids=[2]))
    grammar = compiled.compile_regex(PATTERN)

    def next_token(prefix: tuple[int, ...]) -> torch.Tensor:
        matcher = xgr.GrammarMatcher(grammar)
        for token in prefix:
            assert matcher.accept_token(token)
        mask = xgr.allocate_token_bitmask(1, VOCAB)
        matcher.fill_next_token_bitmask(mask, 0)
        with torch.no_grad():
            logits = model(torch.tensor([PROMPT + list(prefix)])).logits[0, -1:].float()
        xgr.apply_token_bitmask_inplace(logits, mask)
        return torch.softmax(logits[0].double(), -1)

    law = {}
    for outcome in itertools.product(range(VOCAB), repeat=LENGTH):
        if re.fullmatch(PATTERN, "".join(LETTERS[t] for t in outcome)):
            law[outcome] = float(torch.prod(torch.stack([next_token(outcome[:i])[outcome[i]] for i in range(LENGTH)])))
    assert abs(sum(law.values()) - 1) < 1e-9
    return law


def test_a_plan_feeds_the_draft_up_to_the_first_forbidden_token_and_judges_that_one(letters_target):
    grammars = splitspec.output_grammar.GrammarCompiler(AutoTokenizer.from_pretrained(str(letters_target)), VOCAB, [2])
    state = grammars.state(StructuredOutputsParams(regex=PATTERN), [])
    plan = state.plan([0, 5, 2, 0])  # a, f, then c: forbidden at the third position
    assert (plan.fed, plan.judged, len(plan.bitmask)) == (2, 3, 3)
    logits = torch.zeros(3, VOCAB)
    state.apply(logits, plan.bitmask)
    allowed = [[LETTERS[t] for t in range(VOCAB) if logits[row, t] == 0] for row in range(3)]
    assert allowed == [list("abdeg"), list("abdefgh"), list("abdefgh")]
    assert state.plan([1]).fed == 1 and state.plan([5]).judged == 1  # the walk left the matcher where it was
    state.advance([3, 6, 7])  # d g h: the pattern is matched, and then only EOS may follow
    last = state.plan([2, 0])
    assert (last.fed, last.judged) == (1, 1)  # EOS, after which nothing is masked or judged
    with pytest.raises(SplitspecError, match="does not follow"):
        grammars.state(StructuredOutputsParams(regex=PATTERN), [2])  # a resumed output the grammar forbids


def _letters_llm(target, draft) -> LLM:
    spec = {"method": "draft_model", "model": str(draft), "num_speculative_tokens": 2, "draft_top_k": 4}
    return LLM(str(target), speculative_config=dict(spec, adaptive=False), max_num_seqs=256)


def _samples(llm: LLM) -> tuple[list[tuple[int, ...]], int, int]:
    so = StructuredOutputsParams(regex=PATTERN)
    params = [
        SamplingParams(temperature=1.0, max_tokens=LENGTH + 1, seed=s, structured_outputs=so)
        for s in range(NUM_SAMPLES)
    ]
    outputs = llm.generate([{"prompt_token_ids": PROMPT}] * NUM_SAMPLES, params, use_tqdm=False)
    for o in outputs:  # the pattern, then EOS: the only token the matched grammar allows
        assert o.outputs[0].finish_reason == "stop" and o.outputs[0].token_ids[-1] == 2
    drafted = sum(o.spec_stats.num_draft_tokens for o in outputs)
    accepted = sum(o.spec_stats.num_accepted_tokens for o in outputs)
    return [tuple(o.outputs[0].token_ids[:LENGTH]) for o in outputs], drafted, accepted


def _p_value(samples: list[tuple[int, ...]], law: dict[tuple[int, ...], float]) -> float:
    n = len(samples)
    assert set(samples) <= set(law), "a sample the grammar forbids"
    observed, expected, pooled_o, pooled_e = [], [], 0, 0.0
    for cell in sorted(law, key=law.get, reverse=True):
        count = samples.count(cell)
        if law[cell] * n >= 5:
            observed.append(count)
            expected.append(law[cell] * n)
        else:
            pooled_o, pooled_e = pooled_o + count, pooled_e + law[cell] * n
    if pooled_e > 0:
        observed.append(pooled_o)
        expected.append(pooled_e)
    return chisquare(observed, [e * n / sum(expected) for e in expected]).pvalue


def test_sampled_drafts_under_a_grammar_keep_the_constrained_law(letters_target, letters_draft, constrained_law):
    samples, drafted, accepted = _samples(_letters_llm(letters_target, letters_draft))
    assert 0 < accepted < drafted
    assert _p_value(samples, constrained_law) > ALPHA


def test_the_law_test_catches_a_forbidden_draft_treated_as_the_end_of_the_draft(
    monkeypatch, letters_target, letters_draft, constrained_law
):
    """The broken rule: cut the draft before its forbidden token and draw that position from p as a bonus
    token, instead of from the residual of the forbidden token's rejection."""
    plan = splitspec.output_grammar.GrammarState.plan

    def cut_as_the_end(self, draft_token_ids):
        honest = plan(self, draft_token_ids)
        return GrammarPlan(honest.fed, honest.fed, honest.bitmask)

    monkeypatch.setattr(splitspec.output_grammar.GrammarState, "plan", cut_as_the_end)
    samples, _, _ = _samples(_letters_llm(letters_target, letters_draft))
    assert _p_value(samples, constrained_law) < ALPHA


# -- the default model: JSON, regex, choice and grammar, greedy ----------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
}
CASES = {
    "json": StructuredOutputsParams(json=SCHEMA),
    "json_object": StructuredOutputsParams(json_object=True),
    "regex": StructuredOutputsParams(regex=r"[0-9]{3}-[0-9]{4}"),
    "choice": StructuredOutputsParams(choice=["Paris", "London", "Rome"]),
    "grammar": StructuredOutputsParams(grammar='root ::= "The answer is " ("yes" | "no") "."'),
}
QUESTION = [{"role": "user", "content": "Name the largest city in France and its population, as JSON."}]


def _valid(kind: str, text: str) -> bool:
    if kind == "json":
        value = json.loads(text)
        return set(value) == {"city", "population"} and isinstance(value["population"], int)
    if kind == "json_object":
        return isinstance(json.loads(text), dict)
    if kind == "regex":
        return re.fullmatch(r"[0-9]{3}-[0-9]{4}", text) is not None
    if kind == "choice":
        return text in ("Paris", "London", "Rome")
    return re.fullmatch(r"The answer is (yes|no)\.", text) is not None


@pytest.fixture(scope="module")
def default_llms(default_model_path) -> dict[str, LLM]:
    path = str(default_model_path)
    return {
        "plain": LLM(path),
        "ngram": LLM(path, speculative_config={"method": "ngram", "num_speculative_tokens": 5, "adaptive": False}),
        "draft_model": LLM(
            path,
            speculative_config={"method": "draft_model", "model": path, "num_speculative_tokens": 3, "adaptive": False},
        ),  # fmt: skip
    }


def _plain_constrained_greedy(llm: LLM, prompt: list[int], so: StructuredOutputsParams, max_tokens: int) -> list[int]:
    """The reference: one full forward pass per token, masked by a matcher of xgrammar's own."""
    tokenizer = llm.tokenizer
    info = xgr.TokenizerInfo.from_huggingface(
        tokenizer, vocab_size=llm.runner.vocab_size, stop_token_ids=[tokenizer.eos_token_id]
    )
    grammar = splitspec.output_grammar.GrammarCompiler(tokenizer, llm.runner.vocab_size, [tokenizer.eos_token_id])
    matcher = xgr.GrammarMatcher(grammar.compile(so))
    assert info.vocab_size == llm.runner.vocab_size
    out: list[int] = []
    mask = xgr.allocate_token_bitmask(1, llm.runner.vocab_size)
    while len(out) < max_tokens and not matcher.is_terminated():
        logits = llm.runner.forward([ForwardInput("reference", prompt + out, 1)]).float().clone()
        llm.runner.free("reference")
        matcher.fill_next_token_bitmask(mask, 0)
        xgr.apply_token_bitmask_inplace(logits, mask)
        token = int(logits[0].argmax())
        assert matcher.accept_token(token)
        out.append(token)
    return out


@pytest.mark.default_model
@pytest.mark.parametrize("kind", list(CASES))
def test_greedy_structured_output_is_plain_constrained_decoding_with_every_drafter(default_llms, kind):
    plain = default_llms["plain"]
    prompt = plain.tokenizer.encode(plain.apply_chat_template(QUESTION))
    params = SamplingParams(temperature=0, max_tokens=48, structured_outputs=CASES[kind])
    expected = plain.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0].outputs[0]
    assert expected.token_ids == _plain_constrained_greedy(plain, prompt, CASES[kind], 48)
    if expected.finish_reason == "stop":  # ended by the grammar: the whole answer matches it
        assert _valid(kind, expected.text), expected.text
    free = plain.generate([{"prompt_token_ids": prompt}], SamplingParams(temperature=0, max_tokens=48), use_tqdm=False)
    assert free[0].outputs[0].token_ids != expected.token_ids  # the grammar is what shaped the answer
    for method in ("ngram", "draft_model"):
        out = default_llms[method].generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0]
        assert out.outputs[0].token_ids == expected.token_ids, method
        stats = out.spec_stats
        assert stats.num_draft_tokens > 0, method
        if method == "draft_model" and kind.startswith("json"):  # the unconstrained target drafts long
            assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens  # answers; the grammar cuts some


@pytest.mark.default_model
def test_a_grammar_that_does_not_compile_is_a_clear_error(default_llms):
    llm = default_llms["plain"]
    for so, words in (
        (StructuredOutputsParams(regex="(ab"), "structured_outputs.regex: Regex parsing error"),
        (StructuredOutputsParams(grammar="root ::= foo"), "structured_outputs.grammar: EBNF parser error"),
        (StructuredOutputsParams(json={"type": "nonsense"}), "structured_outputs.json: Unsupported type"),
    ):
        with pytest.raises(SplitspecError, match=re.escape(words)) as caught:
            llm.generate("hi", SamplingParams(structured_outputs=so), use_tqdm=False)
        assert "/project/cpp" not in str(caught.value)
    assert llm.generate("hi", SamplingParams(max_tokens=2), use_tqdm=False)[0].outputs[0].token_ids  # still serving
