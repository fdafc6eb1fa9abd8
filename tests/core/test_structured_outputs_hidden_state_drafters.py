"""Structured output with the drafters that read the target's hidden states (EAGLE-3, EAGLE, MLP
speculator): a draft cut at a token the grammar forbids leaves the head fed with exactly the committed
tokens' states, so greedy output is plain constrained decoding's and drafts keep passing after cuts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from e2e_requests import PROMPTS
from eagle3_heads import fit_eagle3
from eagle3_heads import target_texts as eagle3_texts
from fitted_heads import assert_drafts_pass_often_but_not_always, write_fitted_eagle, write_fitted_mlp_speculator
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from splitspec import LLM, SamplingParams
from splitspec.output_grammar import GrammarState
from splitspec.structured_outputs import StructuredOutputsParams

WORDS = [f"w{i:03d}" for i in range(256)]  # token i's text: four characters, so every text parses one way
EOS = 2
LENGTH = 20
CUT_AT = 14
FREE = SamplingParams(temperature=0, max_tokens=LENGTH, ignore_eos=True)


@pytest.fixture(scope="module")
def worded_target(tiny_llama_8_layers, tmp_path_factory) -> Path:
    """The 8-layer tiny target with a tokenizer whose token i is WORDS[i], so that a grammar can name
    its tokens."""
    path = tmp_path_factory.mktemp("worded") / "target"
    shutil.copytree(tiny_llama_8_layers, path)
    words = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token=WORDS[0]))
    PreTrainedTokenizerFast(tokenizer_object=words, eos_token=WORDS[EOS]).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def forbidden(worded_target) -> set[int]:
    """Tokens the target's free greedy text holds from CUT_AT on and not before, and that every test head
    can draft (the EAGLE-3 heads' draft vocabulary is the odd ids): heads fitted to that text draft them
    there, and the grammar forbids them."""
    texts = LLM(str(worded_target)).generate([{"prompt_token_ids": p} for p in PROMPTS], FREE, use_tqdm=False)
    outputs = [o.outputs[0].token_ids for o in texts]
    earlier = {t for out in outputs for t in out[:CUT_AT]}
    tokens = {t for out in outputs for t in out[CUT_AT:] if t % 2} - earlier - {EOS}
    assert tokens, "no odd token first appears after CUT_AT: move it"
    return tokens


@pytest.fixture(scope="module")
def constrained(forbidden) -> SamplingParams:
    """LENGTH tokens, none forbidden, then EOS."""
    pattern = "(" + "|".join(w for i, w in enumerate(WORDS) if i not in forbidden and i != EOS) + f"){{{LENGTH}}}"
    return SamplingParams(
        temperature=0, max_tokens=LENGTH + 1, structured_outputs=StructuredOutputsParams(regex=pattern)
    )


@pytest.fixture(scope="module")
def heads(worded_target, tmp_path_factory) -> dict[str, Path]:
    """Each head fitted to the target's free greedy text: its drafts pass often where the constrained
    text follows that, and hold the forbidden tokens where it does not."""
    folder = tmp_path_factory.mktemp("fitted_heads")
    texts = eagle3_texts(worded_target, PROMPTS, FREE)
    return {
        "eagle3": fit_eagle3(folder / "eagle3", worded_target, texts, [2, 4, 5]),
        "eagle": write_fitted_eagle(folder / "eagle", worded_target, PROMPTS, FREE),
        "mlp_speculator": write_fitted_mlp_speculator(folder / "mlp", worded_target, PROMPTS, FREE),
    }


@pytest.mark.parametrize("method", ["eagle3", "eagle", "mlp_speculator"])
def test_hidden_state_drafters_under_a_grammar_are_plain_constrained_decoding(
    worded_target, forbidden, constrained, heads, method, monkeypatch
):
    requests = [{"prompt_token_ids": p} for p in PROMPTS]
    plain = LLM(str(worded_target)).generate(requests, constrained, use_tqdm=False)
    for out in plain:
        assert len(out.outputs[0].token_ids) == LENGTH + 1 and out.outputs[0].token_ids[-1] == EOS
        assert not forbidden & set(out.outputs[0].token_ids)
    plans = []  # (drafted, fed): a draft is fed up to the first token the grammar forbids
    plan = GrammarState.plan

    def recorded_plan(self, draft):
        made = plan(self, draft)
        plans.append((len(draft), made.fed))
        return made

    monkeypatch.setattr(GrammarState, "plan", recorded_plan)
    spec = {"method": method, "model": str(heads[method]), "num_speculative_tokens": 3, "adaptive": False}
    outputs = LLM(str(worded_target), speculative_config=spec).generate(requests, constrained, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == [o.outputs[0].token_ids for o in plain]
    assert_drafts_pass_often_but_not_always([o.spec_stats for o in outputs])
    assert any(fed < drafted for drafted, fed in plans), "no draft held a forbidden token: the cut went untested"
