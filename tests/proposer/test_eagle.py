"""EAGLE heads: the published format, the forward pass against transformers, and lossless output.

The reference runs transformers' own Llama decoder layer (first input norm and final norm removed, as
EAGLE defines them) over the whole sequence with no cache, re-run from scratch for every drafted
token: a separate computation from the drafter's paged, incremental one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fitted_heads import assert_drafts_pass_often_but_not_always, write_fitted_eagle
from greedy_reference import assert_same_or_near_tie
from safetensors.torch import save_file
from tiny_checkpoints import write_eagle
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaModel

from proposer_svc.eagle import EagleProposer, EagleRunner
from splitspec import LLM, SamplingParams
from splitspec.checkpoint import read_embedding_and_head, read_tensors
from splitspec.config import detect_method, is_eagle3_dir
from splitspec.drafts import DraftRequest
from splitspec.errors import SplitspecError

PROMPTS = [[5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6], [17, 3], list(range(30, 90)), [100, 101, 102, 100, 101]]
GREEDY = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)


@pytest.fixture(scope="module")
def eagle(tmp_path_factory, tiny_llama) -> Path:
    """A head for the tiny Llama fitted to its greedy text on PROMPTS, as EAGLE heads are published: on
    that text it drafts runs of right tokens, and wrong ones too."""
    return write_fitted_eagle(tmp_path_factory.mktemp("eagle") / "head", tiny_llama, PROMPTS, GREEDY)


def reference_drafts(
    head: Path, embedding: torch.Tensor, output_head: torch.Tensor, tokens: list[int], states: torch.Tensor, k: int
) -> list[int]:
    """states [len(tokens) - 1, hidden]: the target's state at each position j, paired with tokens[j + 1]."""
    weights = {name.removeprefix("model."): t.float() for name, t in read_tensors(head).items()}
    config = LlamaConfig.from_pretrained(str(head))
    model = LlamaModel(config).eval()
    model.layers[0].input_layernorm = torch.nn.Identity()
    model.norm = torch.nn.Identity()
    model.load_state_dict({n: t for n, t in weights.items() if n.startswith("layers.")}, strict=False)
    pair_tokens, pair_states, drafts = list(tokens[1:]), [s for s in states], []
    with torch.no_grad():
        for _ in range(k):
            mixed = torch.cat((embedding[torch.tensor(pair_tokens)], torch.stack(pair_states)), dim=-1)
            x = mixed @ weights["fc.weight"].t() + weights.get("fc.bias", 0)
            predicted = model(inputs_embeds=x[None]).last_hidden_state[0, -1]
            token = int(torch.argmax(predicted @ output_head.t()))
            drafts.append(token)
            pair_tokens.append(token)
            pair_states.append(predicted)
    return drafts


def target_states(target: Path, tokens: list[int]) -> torch.Tensor:
    hf = AutoModelForCausalLM.from_pretrained(str(target)).eval()
    with torch.no_grad():
        return hf(torch.tensor([tokens[:-1]]), output_hidden_states=True).hidden_states[-1][0]


@pytest.mark.parametrize("layout", ["safetensors", "bin_with_prefix_and_embedding"])
def test_drafts_match_transformers_decoder_layer(tmp_path, tiny_llama, layout) -> None:
    target_embedding, output_head = read_embedding_and_head(tiny_llama)
    if layout == "safetensors":
        head = write_eagle(tmp_path / "eagle", hidden_size=64, vocab_size=256, fc_bias=True, seed=3)
        embedding = target_embedding
    else:  # the head's own embedding replaces the target's
        head = write_eagle(
            tmp_path / "eagle",
            hidden_size=64,
            vocab_size=256,
            seed=4,
            prefix="model.",
            with_embedding=True,
            as_bin=True,
        )
        embedding = read_tensors(head)["model.embed_tokens.weight"]
        assert not torch.equal(embedding, target_embedding)
    assert detect_method(head) == "eagle"
    proposer = EagleProposer(EagleRunner(head, tiny_llama))
    tokens = [5, 9, 44, 17, 200, 3, 3, 8]
    states = target_states(tiny_llama, tokens)
    drafts = proposer.propose([DraftRequest("s", tokens, 4, hidden_state=states)])[0]
    reference = reference_drafts(head, embedding, output_head, tokens, states, 4)
    assert drafts.token_ids == reference and drafts.q == [None] * 4

    # the next round: two more committed tokens and their states; the cache keeps the true prefix
    longer = tokens + [reference[0], 77]
    more = target_states(tiny_llama, longer)
    drafts = proposer.propose([DraftRequest("s", longer, 3, hidden_state=more[len(tokens) - 1 :])])[0]
    assert drafts.token_ids == reference_drafts(head, embedding, output_head, longer, more, 3)


def test_missing_or_gapped_states_mean_no_drafts(eagle, tiny_llama) -> None:
    proposer = EagleProposer(EagleRunner(eagle, tiny_llama))
    tokens = [5, 9, 44, 17, 200]
    states = target_states(tiny_llama, tokens)
    none, first = proposer.propose([DraftRequest("a", tokens, 3), DraftRequest("b", tokens, 3, hidden_state=states)])
    assert none.token_ids == [] and len(first.token_ids) == 3
    # "b" skips a step: the rows it gets next start after a position it never saw
    longer = tokens + [1, 2, 3]
    gap = target_states(tiny_llama, longer)[-1:]
    assert proposer.propose([DraftRequest("b", longer, 3, hidden_state=gap)])[0].token_ids == []
    # everything resent from the start (as after a re-prefill), behind rows it never got: drafting
    # resumes from the resent rows
    full = target_states(tiny_llama, longer)
    late = torch.cat([gap, full])
    resumed = proposer.propose([DraftRequest("b", longer, 3, hidden_state=late)])[0]
    fresh = EagleProposer(EagleRunner(eagle, tiny_llama)).propose([DraftRequest("b", longer, 3, hidden_state=full)])[0]
    assert len(resumed.token_ids) == 3 and resumed.token_ids == fresh.token_ids


def test_heads_for_other_models_and_eagle3_are_refused(tmp_path, tiny_llama) -> None:
    other = write_eagle(tmp_path / "other", hidden_size=32, vocab_size=256)
    with pytest.raises(SplitspecError, match="hidden size 32"):
        LLM(str(tiny_llama), speculative_config={"model": str(other), "num_speculative_tokens": 2})
    eagle3 = write_eagle(tmp_path / "eagle3", hidden_size=64, vocab_size=256, prefix="midlayer.")
    with pytest.raises(SplitspecError, match="EAGLE-3"):
        LLM(str(tiny_llama), speculative_config={"method": "eagle", "model": str(eagle3), "num_speculative_tokens": 2})


def write_speculators_eagle3(folder: Path, hidden_size: int = 64, vocab_size: int = 256) -> Path:
    """An EAGLE-3 head's config and tensor names as Red Hat's speculators format publishes them (shapes
    scaled down): fc over three target states, attention over [embedding, state], a draft vocabulary."""
    folder.mkdir(parents=True)
    draft_vocab = vocab_size // 2
    config = {
        "architectures": ["Eagle3Speculator"],
        "speculators_model_type": "eagle3",
        "draft_vocab_size": draft_vocab,
        "norm_before_residual": False,
        "target_hidden_size": hidden_size,
        "transformer_layer_config": {"model_type": "llama", "hidden_size": hidden_size, "vocab_size": vocab_size},
        "speculators_config": {"proposal_methods": [{"speculative_tokens": 3}], "verifier": {"name_or_path": "x"}},
    }
    (folder / "config.json").write_text(json.dumps(config))
    tensors = {
        "fc.weight": torch.zeros(hidden_size, 3 * hidden_size),
        "layers.0.self_attn.q_proj.weight": torch.zeros(hidden_size, 2 * hidden_size),
        "lm_head.weight": torch.zeros(draft_vocab, hidden_size),
        "d2t": torch.zeros(draft_vocab, dtype=torch.int64),
        "t2d": torch.zeros(vocab_size, dtype=torch.bool),
    }
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize(
    ("method", "error"), [(None, "is missing norm.weight, layers.0"), ("eagle", "use method 'eagle3'")]
)
def test_an_eagle3_head_is_not_read_as_an_eagle_one(tmp_path, tiny_llama, method, error) -> None:
    """Detected as EAGLE-3 (here an incomplete one, refused by name), and never run as EAGLE."""
    head = write_speculators_eagle3(tmp_path / "speculator")
    assert is_eagle3_dir(head) and not is_eagle3_dir(write_eagle(tmp_path / "eagle1", hidden_size=64, vocab_size=256))
    spec = {"model": str(head), "num_speculative_tokens": 2} | ({"method": method} if method else {})
    with pytest.raises(SplitspecError, match=error):
        LLM(str(tiny_llama), speculative_config=spec)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_greedy_output_is_the_target_s_own(tiny_llama, eagle, batch_size) -> None:
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    plain = [
        o.outputs[0].token_ids
        for o in LLM(str(tiny_llama)).generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY, use_tqdm=False)
    ]
    llm = LLM(str(tiny_llama), speculative_config={"model": str(eagle), "num_speculative_tokens": 3, "adaptive": False})
    assert llm.config.speculative.method == "eagle"  # detected from the checkpoint
    outputs = []
    for start in range(0, len(PROMPTS), batch_size):
        outputs += llm.generate(
            [{"prompt_token_ids": p} for p in PROMPTS[start : start + batch_size]], GREEDY, use_tqdm=False
        )
    for prompt, out, own in zip(PROMPTS, outputs, plain):
        assert_same_or_near_tie(hf, prompt, out.outputs[0].token_ids, own)
    assert_drafts_pass_often_but_not_always([o.spec_stats for o in outputs])
    # every round drafts but the first (no states yet) and one that max_tokens leaves no room in: the
    # states of every committed token reach the drafter, which stops drafting at a gap
    assert all(o.spec_stats.drafted_per_position[0] >= o.spec_stats.num_rounds - 2 for o in outputs)


@pytest.mark.parametrize("tree_width", [1, 3])
def test_the_drafter_receives_the_state_behind_every_committed_token(tiny_llama, eagle, tree_width) -> None:
    """One row per token committed since the last request, several after a round that accepted
    drafts, and together the states transformers computes for the whole text; with trees too, whose
    kept path's rows are the ones sent."""
    spec = {"model": str(eagle), "num_speculative_tokens": 3, "adaptive": False, "tree_width": tree_width}
    llm = LLM(str(tiny_llama), speculative_config=spec)
    seen: list[DraftRequest] = []
    original = llm.engine.proposer.propose

    def recording(requests: list[DraftRequest]):
        seen.extend(
            DraftRequest(r.seq_id, list(r.token_ids), r.num_tokens, hidden_state=r.hidden_state) for r in requests
        )
        return original(requests)

    llm.engine.proposer.propose = recording
    out = llm.generate([{"prompt_token_ids": PROMPTS[0]}], GREEDY, use_tqdm=False)[0]
    rows = torch.cat([r.hidden_state for r in seen if r.hidden_state is not None])
    everything = PROMPTS[0] + out.outputs[0].token_ids
    covered = len(seen[-1].token_ids) - 1
    torch.testing.assert_close(rows, target_states(tiny_llama, everything[: covered + 1]), rtol=1e-4, atol=1e-4)
    assert len(seen[1].hidden_state) == len(PROMPTS[0])  # the prefill's: one per prompt token
    committed = [len(b.token_ids) - len(a.token_ids) for a, b in zip(seen[1:], seen[2:])]
    assert [len(r.hidden_state) for r in seen[2:]] == committed
    assert max(committed) > 2  # a round accepted two drafts or more, and its rows all arrived


@pytest.mark.parametrize(("batch_size", "tree_width"), [(1, 1), (4, 1), (4, 3)])
def test_seeded_sampling_is_the_target_s_own_samples(tiny_llama, eagle, batch_size, tree_width) -> None:
    params = [
        SamplingParams(temperature=t, top_p=p, seed=s, max_tokens=30, ignore_eos=True)
        for t, p, s in ((0.3, 1.0, 1), (0.8, 0.95, 2), (1.0, 1.0, 3), (0.1, 0.9, 4))
    ]
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    plain = [o.outputs[0].token_ids for o in LLM(str(tiny_llama)).generate(prompts, params, use_tqdm=False)]
    llm = LLM(
        str(tiny_llama),
        speculative_config={
            "method": "eagle",
            "model": str(eagle),
            "num_speculative_tokens": 3,
            "adaptive": False,
            "tree_width": tree_width,
        },
    )
    outputs = []
    for start in range(0, len(PROMPTS), batch_size):
        outputs += llm.generate(prompts[start : start + batch_size], params[start : start + batch_size], use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == plain
    assert_drafts_pass_often_but_not_always([o.spec_stats for o in outputs])


def test_trees_grown_for_a_batch_are_those_grown_one_at_a_time(tiny_llama, eagle) -> None:
    """Every tree of a batch grows a level in one pass of the head: each request's rounds draft and keep
    what they do when it runs alone (states or rows mixed up between requests would change them)."""
    spec = {"method": "eagle", "model": str(eagle), "num_speculative_tokens": 5, "adaptive": False, "tree_width": 3}
    llm = LLM(str(tiny_llama), speculative_config=spec)
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    alone = [llm.generate([p], GREEDY, use_tqdm=False)[0].spec_stats for p in prompts]
    together = [o.spec_stats for o in llm.generate(prompts, GREEDY, use_tqdm=False)]
    assert [(s.num_rounds, s.num_draft_tokens, s.num_accepted_tokens) for s in together] == [
        (s.num_rounds, s.num_draft_tokens, s.num_accepted_tokens) for s in alone
    ]
    assert sum(s.num_accepted_tokens for s in alone) > 0
