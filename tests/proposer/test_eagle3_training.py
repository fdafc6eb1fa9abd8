"""Training an EAGLE-3 head: training-time test unrolls exactly the drafting the runner does, the draft
vocabulary maps both ways, the checkpoint is in the speculators layout, and `splitspec
train-speculator --method eagle3 --quick` trains and reports one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from proposer_svc.eagle3 import Eagle3Runner
from proposer_svc.eagle3_training import (
    IGNORE,
    Eagle3Head,
    HeadShape,
    Text,
    TrainingSettings,
    draft_maps,
    draft_vocabulary,
    eagle3_config,
    expected_tokens_per_pass,
    held_out_drafts,
    save_eagle3,
    train,
    ttt_labels,
    ttt_loss,
    ttt_mask,
    unroll,
)
from splitspec.checkpoint import read_embedding_and_head
from splitspec.models.loader import load_config
from splitspec.models.runner import ForwardInput

H, VOCAB, STEPS = 16, 50, 3
DRAFT_IDS = torch.tensor([0, 3, 4, 7, 10, 11, 20, 21, 22, 30, 31, 40, 41, 42, 48, 49])
TARGET = SimpleNamespace(
    hidden_size=H, intermediate_size=24, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
    vocab_size=VOCAB, rms_norm_eps=1e-6, rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
    max_position_embeddings=256,
)  # fmt: skip


def _head(seed: int = 0) -> Eagle3Head:
    torch.manual_seed(seed)
    head = Eagle3Head(HeadShape.of_target(TARGET, len(DRAFT_IDS)), DRAFT_IDS)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + (1 if p.dim() == 1 else 0))  # norms near 1, the rest large
    return head


def _text(n: int = 12, first: int = 4, seed: int = 0) -> Text:
    g = torch.Generator().manual_seed(seed)
    ids = DRAFT_IDS[torch.randint(0, len(DRAFT_IDS), (n + 1,), generator=g)]
    return Text(torch.randn(n, 3 * H, generator=g), ids, first)


def _served_chain(head: Eagle3Head, text: Text, row: int, fed: list[int] | None) -> list[torch.Tensor]:
    """The runner's drafting after the target committed ids[: row + 2], one step at a time with a
    growing KV list: step 1 over rows 0 .. row (causal), then one row per step at position row + k - 1
    that sees every key so far. fed: step k's token (the true ones), or None for its own drafts."""
    rows = torch.arange(row + 1)
    causal = rows[None] <= rows[:, None]
    out = head.step(text.ids[1 : row + 2], head.fc(text.aux[: row + 1]), rows, [], causal)
    past, state = [out], out.state[-1:]
    logits = [head.logits(state)]
    for k in range(2, STEPS + 1):
        token = head.to_target(logits[-1].argmax(-1)) if fed is None else torch.tensor([fed[k - 2]])
        seen = sum(len(p.keys) for p in past) + 1
        out = head.step(token, state, torch.tensor([row + k - 1]), past, torch.ones(1, seen, dtype=torch.bool))
        past.append(out)
        state = out.state
        logits.append(head.logits(state))
    return logits


def test_step_masks_see_step_one_causally_and_only_their_own_later_steps() -> None:
    rows = torch.tensor([2, 3])
    assert torch.equal(ttt_mask(torch.arange(3), 3, 1), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]]).bool())
    expected = torch.tensor([[1, 1, 1, 0, 1, 0, 1, 0], [1, 1, 1, 1, 0, 1, 0, 1]]).bool()
    assert torch.equal(ttt_mask(rows, 4, 3), expected)


@torch.no_grad()
def test_training_time_test_is_the_runner_s_drafting_for_every_row() -> None:
    """Teacher-forced TTT logits equal drafting after each row fed the true tokens, and the drafted
    unroll equals drafting fed the head's own drafts: same keys, positions and fed-back states."""
    head, text = _head(), _text()
    forced = unroll(head, text.aux, text.ids, text.first, STEPS)
    drafted = unroll(head, text.aux, text.ids, text.first, STEPS, drafted=True)
    n = len(text.ids) - 1
    for row in range(text.first, n - STEPS + 1):
        truth = [int(text.ids[row + k]) for k in range(2, STEPS + 1)]
        for unrolled, fed in ((forced, truth), (drafted, None)):
            served = _served_chain(head, text, row, fed)
            for step in range(STEPS):
                torch.testing.assert_close(unrolled[step][row - text.first], served[step][0], atol=1e-4, rtol=1e-4)


def test_labels_are_the_token_k_plus_one_ahead_in_draft_ids() -> None:
    head = _head()
    ids = torch.tensor([0, 3, 5, 7, 10, 11])  # 5 is outside the draft vocabulary
    labels = ttt_labels(head, ids, 1, 2)
    draft = {int(t): i for i, t in enumerate(DRAFT_IDS)}
    assert labels.tolist() == [
        [draft[7], draft[10], draft[11], IGNORE],  # rows 1..4, step 1: ids[j + 2]
        [draft[10], draft[11], IGNORE, IGNORE],  # step 2: ids[j + 3]
    ]
    assert ttt_labels(head, torch.tensor([0, 5, 3]), 0, 1).tolist() == [[draft[3], IGNORE]]


def test_the_draft_vocabulary_is_the_most_written_tokens_and_maps_both_ways() -> None:
    outputs = [[5, 5, 5, 9, 9, 2], [9, 7]]
    prompts = [[1, 1, 8]]
    ids = draft_vocabulary(outputs, prompts, vocab_size=12, size=7)
    assert ids.tolist() == [0, 1, 2, 5, 7, 8, 9]  # written first, then read (1, 8), then the lowest ids (0)
    assert draft_vocabulary(outputs, prompts, 12, 2).tolist() == [5, 9]
    d2t, t2d = draft_maps(ids, 12)
    assert d2t.dtype == torch.int64 and t2d.dtype == torch.bool
    assert (torch.arange(7) + d2t).tolist() == ids.tolist()
    assert t2d.nonzero().flatten().tolist() == ids.tolist()


def test_the_checkpoint_is_in_the_speculators_layout(tmp_path: Path) -> None:
    head = _head()
    config = eagle3_config(TARGET, head.shape, (2, 5, 9), "some/target", STEPS, "float32")
    save_eagle3(tmp_path, head, config)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["speculators_model_type"] == "eagle3" and saved["architectures"] == ["Eagle3Speculator"]
    assert saved["draft_vocab_size"] == len(DRAFT_IDS) and saved["norm_before_residual"] is False
    assert saved["eagle_aux_hidden_state_layer_ids"] == [2, 5, 9] and saved["target_hidden_size"] == H
    layer = saved["transformer_layer_config"]
    assert layer["num_hidden_layers"] == 1 and layer["vocab_size"] == VOCAB and layer["model_type"] == "llama"
    assert layer["rope_theta"] == 10000.0 and layer["rope_scaling"] is None and layer["head_dim"] == 8
    spec = saved["speculators_config"]
    assert spec["proposal_methods"][0]["speculative_tokens"] == STEPS
    assert spec["verifier"]["name_or_path"] == "some/target"

    attn, kv = 4 * 8, 2 * 8
    expected = {
        "fc.weight": ([H, 3 * H], torch.float32),
        "layers.0.input_layernorm.weight": ([H], torch.float32),
        "layers.0.hidden_norm.weight": ([H], torch.float32),
        "layers.0.post_attention_layernorm.weight": ([H], torch.float32),
        "layers.0.self_attn.q_proj.weight": ([attn, 2 * H], torch.float32),
        "layers.0.self_attn.k_proj.weight": ([kv, 2 * H], torch.float32),
        "layers.0.self_attn.v_proj.weight": ([kv, 2 * H], torch.float32),
        "layers.0.self_attn.o_proj.weight": ([H, attn], torch.float32),
        "layers.0.mlp.gate_proj.weight": ([24, H], torch.float32),
        "layers.0.mlp.up_proj.weight": ([24, H], torch.float32),
        "layers.0.mlp.down_proj.weight": ([H, 24], torch.float32),
        "norm.weight": ([H], torch.float32),
        "lm_head.weight": ([len(DRAFT_IDS), H], torch.float32),
        "d2t": ([len(DRAFT_IDS)], torch.int64),
        "t2d": ([VOCAB], torch.bool),
        "embed_tokens.weight": ([VOCAB, H], torch.float32),
    }
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        found = {name: (list(f.get_tensor(name).shape), f.get_tensor(name).dtype) for name in f.keys()}
        assert torch.equal(f.get_tensor("d2t") + torch.arange(len(DRAFT_IDS)), DRAFT_IDS)
    assert found == expected


@torch.no_grad()
def test_the_saved_head_drafts_in_the_runner_what_training_unrolls(tmp_path: Path, tiny_llama_8_layers) -> None:
    """save_eagle3's checkpoint, read by the serving runner: its drafts and fed-back states after the
    last committed row are unroll's with its own drafts fed (layer, norms, RoPE, d2t, embedding)."""
    target = load_config(tiny_llama_8_layers)
    draft_ids = torch.arange(0, target.vocab_size, 2)
    torch.manual_seed(0)
    head = Eagle3Head(HeadShape.of_target(target, len(draft_ids)), draft_ids)
    for p in head.parameters():
        p.copy_(torch.randn_like(p) * 0.3 + (1 if p.dim() == 1 else 0))
    head.embed_tokens.weight.copy_(read_embedding_and_head(tiny_llama_8_layers)[0])
    config = eagle3_config(target, head.shape, (2, 4, 5), str(tiny_llama_8_layers), STEPS, "float32")
    save_eagle3(tmp_path / "head", head, config)

    ids = torch.tensor([5, 9, 44, 17, 200, 3, 77, 12, 9, 44])
    aux = torch.randn(len(ids) - 1, 3 * target.hidden_size)
    n = len(ids) - 1
    expected = unroll(head, aux, ids, n - 1, STEPS, drafted=True)
    runner = Eagle3Runner(tmp_path / "head", tiny_llama_8_layers)
    token, state = runner.step([ForwardInput("s", ids[1:].tolist(), 1)], aux, from_target=True)
    drafts, states = [int(token[-1])], [state[-1]]
    for _ in range(STEPS - 1):
        token, state = runner.step([ForwardInput("s", [drafts[-1]], 1)], state[-1:], from_target=False)
        drafts.append(int(token[-1]))
        states.append(state[-1])
    assert drafts == [int(head.to_target(step.argmax(-1))[-1]) for step in expected]
    # the fed-back states: unroll's are not returned, so compare the scores they give
    torch.testing.assert_close(torch.stack([head.logits(s) for s in states]), torch.cat(expected), rtol=1e-4, atol=1e-3)


def test_training_lowers_the_loss_and_the_held_out_chain_is_scored_against_the_text() -> None:
    head = _head()
    texts = [_text(seed=s) for s in range(4)]
    settings = TrainingSettings(steps=STEPS, epochs=6, lr=3e-2, texts_per_update=2, bf16=False)
    losses = train(head, texts, settings, lambda _: None)
    assert losses[-1] < losses[0]
    drafts, truths = held_out_drafts(head, texts[0], STEPS)
    n = len(texts[0].ids) - 1
    assert drafts.shape == truths.shape == (n - STEPS - texts[0].first, STEPS)
    assert truths[0].tolist() == texts[0].ids[texts[0].first + 2 : texts[0].first + 2 + STEPS].tolist()
    assert expected_tokens_per_pass([1.0, 0.5, 0.5]) == pytest.approx(1 + 1 + 0.5 + 0.25)


@pytest.mark.default_model
@pytest.mark.e2e
@pytest.mark.slow
def test_train_speculator_eagle3_quick_saves_a_head_that_drafts(tmp_path: Path) -> None:
    out = tmp_path / "eagle3"
    done = subprocess.run(
        [sys.executable, "-m", "splitspec", "train-speculator", "--method", "eagle3", "--quick", "--output", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert json.loads((out / "training_report.json").read_text()) == report
    steps = json.loads((out / "config.json").read_text())["speculators_config"]["proposal_methods"][0]
    assert len(report["held_out_acceptance_per_position"]) == steps["speculative_tokens"]
    assert report["held_out_expected_tokens_per_pass"] > 1


def test_the_least_squares_start_recovers_a_linear_drafter_and_runs_the_embedding_through_attention() -> None:
    """Texts whose next final state is exactly s A + e(x) B: the start puts A in fc, and the layer's
    attention (each row attending to its own token's occurrences) adds about e(x) B to the residual."""
    from proposer_svc.eagle3_training import _rms_normed, init_by_least_squares

    torch.manual_seed(0)
    head = Eagle3Head(HeadShape.of_target(TARGET, len(DRAFT_IDS)), DRAFT_IDS)  # small random weights, as HF's
    with torch.no_grad():
        head.embed_tokens.weight.normal_()
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3 * H, H, generator=g) * 0.3, torch.randn(H, H, generator=g) * 0.3
    texts = []
    for seed in range(8):
        text = _text(n=40, first=2, seed=seed)
        e = _rms_normed(head.embed_tokens.weight[text.ids[1:]].detach())  # row j feeds ids[j + 1]
        final = torch.zeros(len(text.aux), H)
        final[1:] = text.aux[:-1] @ a + e[:-1] @ b  # f_{j+1} from row j
        texts.append(Text(text.aux, text.ids, text.first, final))
    init_by_least_squares(head, texts, ridge=1e-8, max_span=40)  # texts of 40: two of four rotary pairs
    torch.testing.assert_close(head.fc.weight.T, a, rtol=1e-3, atol=1e-3)
    text = texts[0]
    out = head.step(text.ids[1:], head.fc(text.aux), torch.arange(len(text.aux)), [], ttt_mask(torch.arange(40), 40, 1))
    attention = out.state - head.fc(text.aux)  # the layer's additions: attention (and a small MLP)
    wanted = _rms_normed(head.embed_tokens.weight[text.ids[1:]]) @ b
    closeness = torch.nn.functional.cosine_similarity(attention.flatten(), wanted.flatten(), dim=0)
    assert closeness > 0.5, closeness


def test_distilling_a_target_sure_of_each_token_is_training_on_the_tokens() -> None:
    """TrainingSettings.distill: against a target whose distribution is (nearly) one-hot on the text's
    next tokens, the distilled loss over every row is the hard-label loss from the first row on."""
    head = _head()
    with torch.no_grad():
        head.target_scores.copy_(torch.eye(len(DRAFT_IDS), H))  # draft id d scores state dim d
    text = _text(n=12, first=0)
    n = len(text.ids) - 1
    final = torch.zeros(n, H)
    final[torch.arange(n), head.target_to_draft[text.ids[1:]]] = 1e4  # position p: token ids[p + 1]
    text = Text(text.aux, text.ids, 0, final)
    hard = ttt_loss(head, text, TrainingSettings(steps=STEPS, bf16=False))
    distilled = ttt_loss(head, text, TrainingSettings(steps=STEPS, bf16=False, distill=True))
    torch.testing.assert_close(distilled, hard, rtol=1e-4, atol=1e-3)
