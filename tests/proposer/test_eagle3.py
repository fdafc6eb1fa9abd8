"""EAGLE-3 heads: both published layouts, the forward against an independent float64 reference of the
published formula (tests/eagle3_heads.py), every tensor shown to matter, and lossless output."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from eagle3_heads import Eagle3Reference, fit_eagle3, head_tensors, target_aux_states, target_texts, write_eagle3
from fitted_heads import assert_drafts_pass_often_but_not_always
from tiny_checkpoints import write_tiny_checkpoint
from verified_trees import record_verified_trees

from proposer_svc.eagle3 import Eagle3Proposer, Eagle3Runner
from splitspec import LLM, SamplingParams
from splitspec.config import detect_method
from splitspec.drafts import DraftRequest
from splitspec.eagle3_checkpoint import default_aux_layers, read_eagle3
from splitspec.errors import SplitspecError

PROMPTS = [[5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6], [17, 3], list(range(30, 70)), [100, 101, 102, 100, 101]]
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
SEEDED = [
    SamplingParams(temperature=t, top_p=p, seed=s, max_tokens=24, ignore_eos=True)
    for t, p, s in ((0.3, 1.0, 1), (0.8, 0.95, 2), (1.0, 1.0, 3), (0.1, 0.9, 4))
]
LAYERS = (2, 4, 5)  # the default for the 8-layer target: 2, L // 2, L - 3
TOKENS = [5, 9, 44, 17, 200, 3, 77, 12, 9, 44]


@pytest.fixture(scope="module")
def target(tiny_llama_8_layers) -> Path:
    return tiny_llama_8_layers


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, target) -> Path:
    """A head trained on the target's greedy and seeded text for PROMPTS: it drafts runs of right
    tokens there, and wrong ones too."""
    texts = target_texts(target, PROMPTS, GREEDY) + target_texts(target, PROMPTS, SEEDED)
    return fit_eagle3(tmp_path_factory.mktemp("eagle3") / "head", target, texts, list(LAYERS))


def _bf16_exact(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Values both float16 and bfloat16 hold exactly, so that both layouts store the same head."""
    return {n: t.bfloat16().float() if t.is_floating_point() else t for n, t in tensors.items()}


def _drafts(head: Path, target: Path, tokens: list[int], k: int = 4) -> list[int]:
    return _batch_drafts(head, target, [tokens], k)[0]


def _batch_drafts(head: Path, target: Path, texts: list[list[int]], k: int) -> list[list[int]]:
    layers = read_eagle3(head, target).aux_layers
    requests = [
        DraftRequest(f"s{i}", t, k, hidden_state=target_aux_states(target, t, layers)) for i, t in enumerate(texts)
    ]
    return [d.token_ids for d in Eagle3Proposer(Eagle3Runner(head, target)).propose(requests)]


def test_default_layers_are_two_half_and_three_from_the_end() -> None:
    assert default_aux_layers(32) == (2, 16, 29)  # Llama-3.1-8B, as vLLM's get_eagle3_aux_hidden_state_layers
    assert default_aux_layers(80) == (2, 40, 77)


@pytest.mark.parametrize("layout", ["eagle", "speculators"])
@pytest.mark.parametrize("norm_before_residual", [False, True])
def test_the_head_computes_the_published_formula(tmp_path, target, layout, norm_before_residual) -> None:
    """Drafts and the states fed back, step after step, equal the float64 reference's."""
    tensors = _bf16_exact(head_tensors(64, 64, 128, 256, seed=1))
    head = write_eagle3(tmp_path / layout, target, layout=layout, tensors=tensors)
    config = json.loads((head / "config.json").read_text())
    config["norm_before_residual"] = norm_before_residual
    (head / "config.json").write_text(json.dumps(config))
    states = target_aux_states(target, TOKENS, LAYERS)
    expected, fed_back = Eagle3Reference(head, target).drafts(TOKENS, states.double(), 5)
    runner = Eagle3Runner(head, target)
    assert runner.aux_layers == LAYERS and runner.norm_before_residual is norm_before_residual
    tokens, state = runner.step([_input("s", TOKENS[1:])], states, from_target=True)
    got_states = [state[-1]]
    got = [int(tokens[-1])]
    for _ in range(4):
        tokens, state = runner.step([_input("s", [got[-1]])], state[-1:], from_target=False)
        got.append(int(tokens[-1]))
        got_states.append(state[-1])
    assert got == expected
    torch.testing.assert_close(torch.stack(got_states).double(), fed_back, rtol=1e-4, atol=1e-4)


def _input(seq_id: str, tokens: list[int]):
    from splitspec.models.runner import ForwardInput

    return ForwardInput(seq_id, tokens, 1)


def test_both_layouts_of_one_head_draft_alike(tmp_path, target) -> None:
    tensors = _bf16_exact(head_tensors(64, 64, 128, 256, seed=2))
    eagle = write_eagle3(tmp_path / "eagle", target, layout="eagle", tensors=tensors)
    speculators = write_eagle3(tmp_path / "speculators", target, layout="speculators", tensors=tensors)
    assert detect_method(str(eagle)) == detect_method(str(speculators)) == "eagle3"
    assert _drafts(eagle, target, TOKENS) == _drafts(speculators, target, TOKENS)


@pytest.mark.parametrize(
    "name",
    [
        "fc.weight",
        "midlayer.input_layernorm.weight",
        "midlayer.hidden_norm.weight",
        "midlayer.post_attention_layernorm.weight",
        "midlayer.self_attn.q_proj.weight",
        "midlayer.self_attn.k_proj.weight",
        "midlayer.self_attn.v_proj.weight",
        "midlayer.self_attn.o_proj.weight",
        "midlayer.mlp.gate_proj.weight",
        "midlayer.mlp.up_proj.weight",
        "midlayer.mlp.down_proj.weight",
        "norm.weight",
        "lm_head.weight",
        "d2t",
        "embed_tokens.weight",
    ],
)
def test_every_tensor_matters(tmp_path, target, name) -> None:
    """Changing any one tensor changes the drafts (t2d alone is not read: drafting maps draft ids to
    target ids with d2t, as vLLM and SGLang, which skip t2d when loading)."""
    tensors = head_tensors(64, 64, 128, 256, seed=4)
    generator = torch.Generator().manual_seed(0)
    texts = [torch.randint(0, 256, (12,), generator=generator).tolist() for _ in range(8)]
    plain = _batch_drafts(
        write_eagle3(tmp_path / "plain", target, layout="speculators", tensors=tensors), target, texts, 3
    )
    changed = dict(tensors)
    if name == "d2t":
        changed[name] = tensors[name].roll(1)  # target ids out of order
    elif name == "embed_tokens.weight":
        changed[name] = torch.randn(256, 64)
    elif name.endswith("norm.weight"):
        changed[name] = 3 * torch.randn(64, generator=generator)
    else:
        changed[name] = tensors[name] + torch.randn_like(tensors[name])
    head = write_eagle3(tmp_path / "changed", target, layout="speculators", tensors=changed)
    if name == "embed_tokens.weight":  # the shipped embedding replaces the target's
        from safetensors.torch import load_file, save_file

        stored = load_file(str(head / "model.safetensors"))
        stored[name] = changed[name].bfloat16()
        save_file(stored, str(head / "model.safetensors"))
    assert _batch_drafts(head, target, texts, 3) != plain


def test_heads_for_another_target_or_shape_are_refused(tmp_path, target) -> None:
    other = write_tiny_checkpoint(tmp_path / "wide", "llama", hidden_size=32, num_layers=8)
    head = write_eagle3(tmp_path / "head", target, layout="eagle")
    with pytest.raises(SplitspecError, match="trained for another model"):
        read_eagle3(head, other)
    shallow = write_tiny_checkpoint(tmp_path / "shallow", "llama", num_layers=4)
    with pytest.raises(SplitspecError, match="eagle_aux_hidden_state_layer_ids"):
        read_eagle3(head, shallow)  # the default ids (2, 2, 1) are not three distinct layers
    named = write_eagle3(tmp_path / "named", target, layout="speculators", aux_layers=[1, 3, 6])
    assert read_eagle3(named, target).aux_layers == (1, 3, 6)
    config = json.loads((named / "config.json").read_text())
    config["transformer_layer_config"]["num_hidden_layers"] = 2
    (named / "config.json").write_text(json.dumps(config))
    with pytest.raises(SplitspecError, match="one-layer"):
        read_eagle3(named, target)


def test_norm_before_residual_defaults_by_layout(tmp_path, target) -> None:
    """Missing from a speculators config it is true (vLLM's reader); EAGLE's layout has no such
    option and adds the state itself."""
    speculators = write_eagle3(tmp_path / "s", target, layout="speculators", norm_before_residual=None)
    assert read_eagle3(speculators, target).norm_before_residual is True
    assert read_eagle3(write_eagle3(tmp_path / "e", target, layout="eagle"), target).norm_before_residual is False


@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("how", ["method", "model only"])
def test_greedy_output_is_the_target_s_own(target, fitted, batch_size, how) -> None:
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    plain = [o.outputs[0].token_ids for o in LLM(str(target)).generate(prompts, GREEDY, use_tqdm=False)]
    spec = {"model": str(fitted), "num_speculative_tokens": 3, "adaptive": False}
    llm = LLM(str(target), speculative_config=spec | ({"method": "eagle3"} if how == "method" else {}))
    assert llm.config.speculative.method == "eagle3"
    outputs = []
    for start in range(0, len(prompts), batch_size):
        outputs += llm.generate(prompts[start : start + batch_size], GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == plain
    assert_drafts_pass_often_but_not_always([o.spec_stats for o in outputs])


@pytest.mark.parametrize("varying_k", [False, True])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_seeded_sampling_is_the_target_s_own_samples(target, fitted, batch_size, varying_k) -> None:
    """The head drafts its argmax (one-hot drafts), so cutting them, as adaptive K does (here in a fixed
    cycle of budgets, which timing cannot change), leaves seeds giving plain decoding's samples."""
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    plain = [o.outputs[0].token_ids for o in LLM(str(target)).generate(prompts, SEEDED, use_tqdm=False)]
    spec = {"method": "eagle3", "model": str(fitted), "num_speculative_tokens": 3, "adaptive": False}
    llm = LLM(str(target), speculative_config=spec)
    if varying_k:
        budgets = itertools.cycle([3, 1, 0, 2])
        llm.engine._draft_budget = lambda running: [next(budgets) for _ in running]
    outputs = []
    for start in range(0, len(prompts), batch_size):
        outputs += llm.generate(prompts[start : start + batch_size], SEEDED[start : start + batch_size], use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == plain
    assert_drafts_pass_often_but_not_always([o.spec_stats for o in outputs])


@pytest.mark.parametrize("mode", ["greedy", "seeded"])
def test_trees_from_the_head_give_the_target_s_own_output(target, fitted, mode) -> None:
    """EAGLE-2's dynamic tree on the head (top-k expansion, tree_width 3): greedy and seeded output are
    plain decoding's, with rounds verified as trees (the head, fitted to this text, is sure of most
    tokens, so most of its trees keep their main chain)."""
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    params = GREEDY if mode == "greedy" else SEEDED
    plain = [o.outputs[0].token_ids for o in LLM(str(target)).generate(prompts, params, use_tqdm=False)]
    spec = {"method": "eagle3", "model": str(fitted), "num_speculative_tokens": 6, "adaptive": False}
    llm = LLM(str(target), speculative_config=spec | {"tree_width": 3})
    trees = record_verified_trees(llm)
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)] == plain
    assert len(trees) >= 3, "no round was verified as a tree"


def test_a_speculators_head_given_as_the_model_serves_the_target_it_names(target, fitted) -> None:
    llm = LLM(str(fitted))
    assert llm.config.model_path == str(target)
    assert llm.config.speculative.method == "eagle3" and llm.config.speculative.num_speculative_tokens == 3
    prompts = [{"prompt_token_ids": p} for p in PROMPTS[:2]]
    plain = [o.outputs[0].token_ids for o in LLM(str(target)).generate(prompts, GREEDY, use_tqdm=False)]
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, GREEDY, use_tqdm=False)] == plain
    with pytest.raises(SplitspecError, match="names its target"):
        LLM(str(fitted), speculative_config={"method": "ngram", "num_speculative_tokens": 2})


def test_rounds_that_draft_nothing_leave_the_head_unfed_and_it_catches_up(target, fitted) -> None:
    """Adaptive K may verify no draft for a sequence. Those rounds do not run the head; the next round
    that drafts feeds it every state it missed, in one batch, and drafts what a head fed the whole
    text at once drafts."""
    llm = LLM(str(target), speculative_config={"method": "eagle3", "model": str(fitted), "num_speculative_tokens": 3})
    engine, proposer = llm.engine, llm.engine.proposer
    rounds = itertools.count()
    engine._draft_budget = lambda running: [3 if next(rounds) % 3 == 2 else 0 for _ in running]
    head_calls: list[int] = []
    step = proposer.runner.step
    proposer.runner.step = lambda inputs, *a, **kw: head_calls.append(len(inputs)) or step(inputs, *a, **kw)
    asked: list[tuple[list[int], list[int]]] = []
    propose = proposer.propose

    def recording_propose(requests: list[DraftRequest]):
        calls_before = len(head_calls)
        drafts = propose(requests)
        if all(r.num_tokens == 0 for r in requests):
            assert len(head_calls) == calls_before, "a round that drafts nothing ran the head"
        asked.extend((list(r.token_ids), d.token_ids) for r, d in zip(requests, drafts) if r.num_tokens)
        return drafts

    proposer.propose = recording_propose
    prompt = {"prompt_token_ids": PROMPTS[0]}
    plain = LLM(str(target)).generate([prompt], GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    output = llm.generate([prompt], GREEDY, use_tqdm=False)[0]
    assert output.outputs[0].token_ids == plain
    assert len(asked) >= 3 and output.spec_stats.num_accepted_tokens > 0
    assert [drafts for _, drafts in asked] == [_drafts(fitted, target, tokens, 3) for tokens, _ in asked]
