"""The MLP speculator in the engine: it reads the target's hidden state, and output stays lossless."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fitted_heads import assert_drafts_pass_often_but_not_always, write_fitted_mlp_speculator
from greedy_reference import assert_same_or_near_tie
from tiny_checkpoints import write_mlp_speculator
from transformers import AutoModelForCausalLM
from verified_trees import record_verified_trees

from proposer_svc.mlp_speculator import MLPSpeculator, MLPSpeculatorProposer
from splitspec import LLM, SamplingParams, draft_tree
from splitspec.drafts import DraftRequest
from splitspec.errors import SplitspecError

PROMPTS = [[5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6], [17, 3], list(range(30, 90)), [100, 101, 102, 100, 101]]
GREEDY = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)


@pytest.fixture(scope="module")
def speculator(tmp_path_factory, tiny_llama) -> Path:
    """Three heads fitted to the tiny Llama's greedy text on PROMPTS, in IBM's format: on that text
    they draft runs of right tokens, and wrong ones too."""
    return write_fitted_mlp_speculator(tmp_path_factory.mktemp("mlp_speculator"), tiny_llama, PROMPTS, GREEDY)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_greedy_output_is_the_target_s_own(tiny_llama, speculator, batch_size) -> None:
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    plain = [
        o.outputs[0].token_ids
        for o in LLM(str(tiny_llama)).generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY, use_tqdm=False)
    ]
    llm = LLM(
        str(tiny_llama), speculative_config={"model": str(speculator), "num_speculative_tokens": 3, "adaptive": False}
    )
    assert llm.config.speculative.method == "mlp_speculator"  # detected from the checkpoint's config
    outputs = []
    for start in range(0, len(PROMPTS), batch_size):
        chunk = [{"prompt_token_ids": p} for p in PROMPTS[start : start + batch_size]]
        outputs += llm.generate(chunk, GREEDY, use_tqdm=False)
    for prompt, out, own in zip(PROMPTS, outputs, plain):
        assert_same_or_near_tie(hf, prompt, out.outputs[0].token_ids, own)
    assert_drafts_pass_often_but_not_always([o.spec_stats for o in outputs])


def test_the_speculator_reads_the_hidden_state_behind_the_last_token(tiny_llama, speculator) -> None:
    """Each request carries the target's final normed hidden state at the position that produced the
    sequence's last token: what transformers computes for the same tokens, also after rounds that
    accepted drafts (the state is then a later row of the verify pass than the first)."""
    llm = LLM(
        str(tiny_llama), speculative_config={"model": str(speculator), "num_speculative_tokens": 2, "adaptive": False}
    )
    seen: list[DraftRequest] = []
    proposer = llm.engine.proposer
    original = proposer.propose

    def recording(requests: list[DraftRequest]):
        seen.extend(
            DraftRequest(r.seq_id, list(r.token_ids), r.num_tokens, hidden_state=r.hidden_state) for r in requests
        )
        return original(requests)

    proposer.propose = recording
    llm.generate([{"prompt_token_ids": PROMPTS[0]}], GREEDY, use_tqdm=False)
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    assert seen[0].hidden_state is None  # before the first pass there is none: no drafts then
    checked = 0
    for request in seen[1:]:
        if request.num_tokens == 0:  # a round that drafts nothing keeps the state for the next that does
            assert request.hidden_state is None
            continue
        with torch.no_grad():
            out = hf(torch.tensor([request.token_ids[:-1]]), output_hidden_states=True)
        torch.testing.assert_close(request.hidden_state, out.hidden_states[-1][0, -1], rtol=1e-4, atol=1e-4)
        checked += 1
    assert checked >= 5
    committed = [len(b.token_ids) - len(a.token_ids) for a, b in zip(seen, seen[1:])]
    assert max(committed) > 2  # some round accepted two drafts or more


def test_no_hidden_state_means_no_drafts(speculator) -> None:
    proposer = MLPSpeculatorProposer(MLPSpeculator(speculator))
    drafts = proposer.propose(
        [
            DraftRequest("a", [1, 2, 3], 3),
            DraftRequest("b", [1, 2, 3], 5, hidden_state=torch.randn(64)),
        ]
    )
    assert drafts[0].token_ids == []
    assert len(drafts[1].token_ids) == 3 and drafts[1].q == [None] * 3  # at most n_predict, one-hot


def test_a_speculator_for_another_model_is_refused(tmp_path, tiny_llama) -> None:
    other = write_mlp_speculator(
        tmp_path / "other", emb_dim=32, inner_dim=32, vocab_size=256, n_predict=2, tied=False, scale_input=False
    )
    with pytest.raises(SplitspecError, match="hidden states of size 32"):
        LLM(str(tiny_llama), speculative_config={"model": str(other), "num_speculative_tokens": 2})


@pytest.mark.parametrize("batch_size", [1, 4])
def test_seeded_sampling_is_the_target_s_own_samples(tiny_llama, speculator, batch_size) -> None:
    """Argmax drafts are one-hot: each is verified by drawing the target's own seeded sample, so seeded
    sampled output is exactly plain decoding's."""
    params = [
        SamplingParams(temperature=t, top_p=p, seed=s, max_tokens=30, ignore_eos=True)
        for t, p, s in ((0.3, 1.0, 1), (0.8, 0.95, 2), (1.0, 1.0, 3), (0.1, 0.9, 4))
    ]
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    plain = [o.outputs[0].token_ids for o in LLM(str(tiny_llama)).generate(prompts, params, use_tqdm=False)]
    llm = LLM(
        str(tiny_llama), speculative_config={"model": str(speculator), "num_speculative_tokens": 3, "adaptive": False}
    )
    outputs = []
    for start in range(0, len(PROMPTS), batch_size):
        outputs += llm.generate(prompts[start : start + batch_size], params[start : start + batch_size], use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == plain
    assert_drafts_pass_often_but_not_always([o.spec_stats for o in outputs])


def test_a_tree_s_every_token_is_among_the_likeliest_of_its_head_fed_its_own_path(speculator) -> None:
    """Each drafted token at depth d is among the tree width's likeliest tokens of head d - 1 fed the
    tokens of its own path (so each node was fed its parent's state), and the tree's main chain is the
    chain the heads draft."""
    head = MLPSpeculator(speculator)
    proposer = MLPSpeculatorProposer(head)
    generator = torch.Generator().manual_seed(0)
    for last in (5, 17, 100):
        hidden = torch.randn(64, generator=generator)
        (tree,) = proposer.propose([DraftRequest("t", [1, last], 6, hidden_state=hidden, tree_width=2)])
        assert tree.is_tree and len(tree.token_ids) == 6
        chain = head.greedy_drafts(hidden[None], torch.tensor([last]), head.n_predict)[0].tolist()
        main = tree.main_chain().token_ids
        assert main == chain[: len(main)]
        for node in range(len(tree.token_ids)):
            path = [tree.token_ids[i] for i in draft_tree.path_to(tree.parents, node)]
            state, fed = head.input_state(hidden[None]), torch.tensor([last])
            for depth, token in enumerate(path):
                state, logits = head.head_step(depth, state, fed)
                assert token in torch.topk(logits[0], 2).indices.tolist()
                fed = torch.tensor([token])


@pytest.mark.parametrize("mode", ["greedy", "seeded"])
def test_trees_from_the_heads_give_the_target_s_own_output(tiny_llama, speculator, mode) -> None:
    """EAGLE-2's dynamic tree on the heads (tree_width 3): greedy and seeded output are plain decoding's,
    with rounds verified as trees, which pass the next state the kept path's last row."""
    params = GREEDY if mode == "greedy" else SamplingParams(temperature=0.8, seed=7, max_tokens=30, ignore_eos=True)
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    plain = [o.outputs[0].token_ids for o in LLM(str(tiny_llama)).generate(prompts, params, use_tqdm=False)]
    spec = {"model": str(speculator), "num_speculative_tokens": 3, "adaptive": False, "tree_width": 3}
    llm = LLM(str(tiny_llama), speculative_config=spec)
    trees = record_verified_trees(llm)
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)] == plain
    assert len(trees) >= 5, "no round was verified as a tree"
    if mode == "greedy":  # seeded, a branch is kept where the target's sample is its token: rarer
        main = [draft.main_chain().token_ids for draft, _ in trees]
        kept = [[draft.token_ids[i] for i in path] for draft, path in trees]
        assert any(k != m[: len(k)] for k, m in zip(kept, main)), "no round kept a branch off the main chain"
