"""Tree-shaped drafts in the engine: one pass scores every branch as if each were fed alone, only the
accepted path's KV stays, and output equals plain decoding, greedy and seeded."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from e2e_requests import PROMPTS
from tiny_checkpoints import write_perturbed_copy
from verified_trees import record_verified_trees

from proposer_svc.proposer import Proposer
from splitspec import LLM, SamplingParams, draft_tree
from splitspec.drafts import Draft, DraftRequest
from splitspec.models.runner import ForwardInput

MAX_TOKENS = 40
VOCAB = 256  # tiny_llama's
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
SEEDED = SamplingParams(temperature=0.9, seed=123, max_tokens=MAX_TOKENS, ignore_eos=True)


def _generate(llm: LLM, params: SamplingParams, batch_size: int = len(PROMPTS)) -> list[list[int]]:
    outputs = []
    for start in range(0, len(PROMPTS), batch_size):
        batch = [{"prompt_token_ids": p} for p in PROMPTS[start : start + batch_size]]
        outputs += [o.outputs[0].token_ids for o in llm.generate(batch, params, use_tqdm=False)]
    return outputs


@pytest.fixture(scope="module")
def plain(tiny_llama) -> dict[str, list[list[int]]]:
    llm = LLM(str(tiny_llama))
    return {"greedy": _generate(llm, GREEDY), "seeded": _generate(llm, SEEDED)}


class OracleTrees(Proposer):
    """Trees around the known output: the true next tokens sit on a branch that is not always the first,
    beside wrong siblings and a wrong subtree, so accepted paths jump over other branches' rows."""

    method = "ngram"

    def __init__(self, outputs: list[list[int]]) -> None:
        self.full = [p + o for p, o in zip(PROMPTS, outputs)]
        self.rng = random.Random(0)

    def propose(self, requests: list[DraftRequest]) -> list[Draft]:
        return [self._tree(r) for r in requests]

    def _tree(self, request: DraftRequest) -> Draft:
        full = next(f for f in self.full if f[: len(request.token_ids)] == request.token_ids)
        truth = full[len(request.token_ids) : len(request.token_ids) + 4]
        tokens, parents, parent = [], [], draft_tree.ROOT
        for token in truth:
            options = self.rng.sample([token, (token + 1) % VOCAB, (token + 2) % VOCAB], 3)
            index = {}
            for option in options:
                index[option] = len(tokens)
                tokens.append(option)
                parents.append(parent)
            tokens.append((token + 7) % VOCAB)  # below a wrong sibling: a subtree the walk never enters
            parents.append(index[next(o for o in options if o != token)])
            if self.rng.random() < 0.2:
                break  # the rest of the truth is left out: the round ends with a correction
            parent = index[token]
        return Draft(tokens, [None] * len(tokens), parents).first(request.num_tokens)

    def release(self, seq_id: str) -> None:
        pass


def _llm_with_trees(
    tiny_llama, proposer: Proposer | None = None, width: int = 3, method: str = "ngram", adaptive: bool = False
) -> LLM:
    spec = {"method": method, "num_speculative_tokens": 16, "adaptive": adaptive, "tree_width": width}
    llm = LLM(str(tiny_llama), speculative_config=spec)
    if proposer is not None:
        llm.engine.proposer = proposer
    return llm


@pytest.mark.parametrize("mode", ["greedy", "seeded"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_trees_whose_true_branch_moves_around_give_plain_output(tiny_llama, plain, mode, batch_size) -> None:
    llm = _llm_with_trees(tiny_llama, OracleTrees(plain[mode]))
    seen = record_verified_trees(llm)
    assert _generate(llm, GREEDY if mode == "greedy" else SEEDED, batch_size) == plain[mode]
    kids = [draft_tree.children(d.parents) for d, _ in seen]
    off_main = [path for (d, path), k in zip(seen, kids) if path and path[0] != k[draft_tree.ROOT][0]]
    moved = [path for _, path in seen if any(node != i for i, node in enumerate(path))]
    assert len(off_main) >= 5 and len(moved) >= 5, "the test never accepted a branch but the first"
    assert max(len(path) for _, path in seen) >= 3


@pytest.mark.parametrize("mode", ["greedy", "seeded"])
def test_trees_sized_by_adaptive_k_give_plain_output(tiny_llama, plain, mode) -> None:
    """Adaptive K sizes a tree by how often each of its tokens was kept (PositionalAcceptance.node_gains)
    and the proposer drafts that many: a tree cut to its budget still verifies to plain output."""
    llm = _llm_with_trees(tiny_llama, OracleTrees(plain[mode]), adaptive=True)
    seen = record_verified_trees(llm)
    assert _generate(llm, GREEDY if mode == "greedy" else SEEDED, 4) == plain[mode]
    assert any(d.is_tree for d, _ in seen)


@pytest.mark.parametrize("width", [2, 3])
@pytest.mark.parametrize("mode", ["greedy", "seeded"])
def test_ngram_trees_give_plain_output(tiny_llama, plain, width, mode) -> None:
    llm = _llm_with_trees(tiny_llama, width=width)
    seen = record_verified_trees(llm)
    assert _generate(llm, GREEDY if mode == "greedy" else SEEDED) == plain[mode]
    assert any(d.is_tree for d, _ in seen), "the drafter never branched"


# after "5 6 7" the text went on with "20 8" three times (then 1, 2 or 3) and with "21" twice: the tree
# 20 -> 8 beside 21 expects more accepted tokens (0.5 + 0.5 + 0.33) than the chain 20 -> 8 -> 1 (0.5 +
# 0.5 + 0.17); "11 5 6 7" occurs only at the end, so no longer match decides alone
BRANCHING = [5, 6, 7, 20, 8, 1, 5, 6, 7, 20, 8, 2, 5, 6, 7, 20, 8, 3, 5, 6, 7, 21, 4, 5, 6, 7, 21, 9, 11, 5, 6, 7]
BRANCHING_PROMPTS = [BRANCHING, [t + 40 for t in BRANCHING]]


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_suffix_trees_give_plain_output(tiny_llama, params) -> None:
    prompts = [{"prompt_token_ids": p} for p in BRANCHING_PROMPTS]
    expected = [o.outputs[0].token_ids for o in LLM(str(tiny_llama)).generate(prompts, params, use_tqdm=False)]
    llm = _llm_with_trees(tiny_llama, method="suffix")
    seen = record_verified_trees(llm)
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)] == expected
    assert sum(len(draft_tree.children(d.parents)[draft_tree.ROOT]) == 2 for d, _ in seen) >= 2


def test_a_sequence_asking_for_logprobs_verifies_trees_and_gets_its_kept_path_s(tiny_llama) -> None:
    """Logprobs are read from the rows of the tree's kept path: tokens and logprobs equal plain
    decoding's, with rounds verified as trees."""
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=2)
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    expected = LLM(str(tiny_llama)).generate(prompts, params, use_tqdm=False)
    llm = _llm_with_trees(tiny_llama, OracleTrees([o.outputs[0].token_ids for o in expected]))
    seen = record_verified_trees(llm)
    got = llm.generate(prompts, params, use_tqdm=False)
    assert any(path and path != list(range(len(path))) for _, path in seen), "no kept path skipped a row"
    for a, b in zip(got, expected):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        for x, y in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
            assert x.keys() == y.keys()
            assert all(abs(x[t].logprob - y[t].logprob) < 1e-4 for t in x)


def test_a_tree_pass_scores_each_token_as_its_path_fed_alone(tiny_llama) -> None:
    """Every row of a tree pass equals the last row of a chain pass over the same context and that
    token's path; after keep_rows the cache is the accepted path's, so the next step agrees too."""
    llm = LLM(str(tiny_llama))
    runner = llm.runner
    context = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38]
    tokens = [7, 8, 9, 10, 11, 12, 13, 14]
    parents = [-1, -1, 0, 0, 1, 3, 2, -1]
    runner.forward([ForwardInput("tree", context[:-1], 1)])
    tree_logits = runner.forward([ForwardInput("tree", [context[-1], *tokens], len(tokens) + 1, tree=parents)])
    for node in [draft_tree.ROOT, *range(len(tokens))]:
        path = [tokens[i] for i in draft_tree.path_to(parents, node)]
        alone = runner.forward([ForwardInput(f"path{node}", context + path, 1)])
        runner.free(f"path{node}")
        torch.testing.assert_close(tree_logits[node + 1], alone[0], atol=1e-4, rtol=1e-4)
    kept = draft_tree.path_to(parents, 5)  # 0 -> 3 -> 5
    runner.keep_rows("tree", len(context) - 1, [0] + [1 + node for node in kept])
    assert runner.cached_length("tree") == len(context) + len(kept)
    after = runner.forward([ForwardInput("tree", [42], 1)])
    chain = runner.forward([ForwardInput("chain", context + [tokens[i] for i in kept] + [42], 1)])
    torch.testing.assert_close(after, chain, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def close_draft(tiny_llama, tmp_path_factory):
    """A copy of the target with a little noise: its second and third guesses are often the target's."""
    return write_perturbed_copy(tiny_llama, tmp_path_factory.mktemp("close_draft"), scale=0.1)


def _draft_model_llm(tiny_llama, draft, width: int) -> LLM:
    spec = {"method": "draft_model", "model": str(draft), "num_speculative_tokens": 8, "adaptive": False}
    return LLM(str(tiny_llama), speculative_config=dict(spec, tree_width=width))


def test_draft_model_trees_give_plain_output_and_accept_other_branches(tiny_llama, close_draft, plain) -> None:
    """A noisy copy of the target drafts EAGLE-2 trees (top-k expansion): greedy output equals plain
    decoding, and some rounds keep a path that is not the draft's main chain (the one a chain would
    have drafted)."""
    llm = _draft_model_llm(tiny_llama, close_draft, 3)
    seen = record_verified_trees(llm)
    assert _generate(llm, GREEDY) == plain["greedy"]
    main = [draft_tree.path_to(d.parents, _main_leaf(d)) for d, _ in seen]
    off_main = [path for (_, path), chain in zip(seen, main) if path != chain[: len(path)]]
    assert len(seen) > 10 and len(off_main) >= 3, "the trees never paid beyond their main chain"


def test_a_draft_model_s_sampled_tree_holds_the_chain_and_pays_off_it(tiny_llama, close_draft) -> None:
    """A sampled request's tree is drawn from q without replacement (TreeExpansion.expand_drawn), each
    node's first child from the chain's own stream: its main chain is the chain width 1 drafts, with the
    same q. The law of what such trees commit is tests/verifier/test_tree_verification.py's; here seeded
    output repeats from run to run, and some rounds keep a path off the main chain."""
    llm = _draft_model_llm(tiny_llama, close_draft, 3)
    for seed, prompt in enumerate(PROMPTS):
        request = DraftRequest("probe", prompt, 8, temperature=0.9, seed=seed)
        (chain,) = llm.engine.proposer.propose([request])
        (tree,) = llm.engine.proposer.propose([dataclasses.replace(request, tree_width=3)])
        main = tree.main_chain()
        assert main.token_ids == chain.token_ids[: len(main.token_ids)]
        for in_tree, in_chain in zip(main.q, chain.q):  # a tree pass's logits differ from a chain's by rounding
            assert torch.equal(in_tree.token_ids, in_chain.token_ids)
            torch.testing.assert_close(in_tree.probs, in_chain.probs, atol=1e-5, rtol=1e-4)
    llm.engine.proposer.release("probe")
    seen = record_verified_trees(llm)
    output = _generate(llm, SEEDED)
    assert output == _generate(_draft_model_llm(tiny_llama, close_draft, 3), SEEDED)
    assert all(q is not None for d, _ in seen for q in d.q)
    main = [draft_tree.path_to(d.parents, _main_leaf(d)) for d, _ in seen]
    off_main = [path for (_, path), chain in zip(seen, main) if path != chain[: len(path)]]
    assert len(seen) > 10 and len(off_main) >= 3, "the trees never paid beyond their main chain"


def test_a_sampled_tree_grows_bushier_as_its_sequence_s_drafts_are_rejected(tiny_llama, close_draft) -> None:
    """A drawn token's chance of being kept is taken from the sequence's measured acceptance (q cannot
    tell it): at the prior's 0.75 a tree of 6 is mostly its main chain; after rounds whose committed
    token was none of the tree's first tokens, the budget goes to siblings."""
    proposer = _draft_model_llm(tiny_llama, close_draft, 3).engine.proposer
    context = list(PROMPTS[0])

    def root_children() -> list[int]:
        (tree,) = proposer.propose([DraftRequest("s", context, 6, temperature=0.9, seed=1, tree_width=3)])
        return [tree.token_ids[i] for i in draft_tree.children(tree.parents)[draft_tree.ROOT]]

    assert len(root_children()) <= 2
    for _ in range(8):
        first = root_children()
        context.append(next(t for t in range(VOCAB) if t not in first))  # the round kept none of them
    assert len(root_children()) == 3


def _main_leaf(draft: Draft) -> int:
    kids, node = draft_tree.children(draft.parents), draft_tree.ROOT
    while node in kids:
        node = kids[node][0]
    return node
