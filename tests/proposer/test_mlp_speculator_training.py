"""Fitting an MLP speculator: the least-squares fit is written exactly into the published architecture,
and `splitspec train-speculator` saves a checkpoint the loader serves losslessly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from proposer_svc.mlp_speculator import MLPSpeculator
from proposer_svc.mlp_speculator_training import (
    SpeculatorExamples,
    chain_agreement,
    fit_mlp_speculator,
    save_mlp_speculator,
)
from splitspec import LLM, SamplingParams
from splitspec.config import detect_method

DIM, VOCAB, N = 16, 40, 2


def _linear_world(n: int, seed: int = 0, weights_seed: int = 0):
    """States that move exactly linearly inside a DIM/2-dimensional subspace: the next state is
    P (A0 h + B e(t) + b) for the first step and P (A1 rms(q) + B e(t) + b) after, which is what the
    fit can represent; each token after the first is the target head's argmax, as in greedy text."""
    g = torch.Generator().manual_seed(weights_seed)
    basis = torch.linalg.qr(torch.randn(DIM, DIM, generator=g)).Q[:, : DIM // 2]
    a0, a1 = torch.randn(DIM // 2, DIM, generator=g), torch.randn(DIM // 2, DIM // 2, generator=g)
    b_tok, bias = torch.randn(DIM // 2, DIM, generator=g), torch.randn(DIM // 2, generator=g)
    embedding = torch.randn(VOCAB, DIM, generator=g)
    head = torch.randn(VOCAB, DIM, generator=g)
    g = torch.Generator().manual_seed(1000 + seed)
    hidden = torch.randn(n, DIM, generator=g)
    tokens = [torch.randint(0, VOCAB, (n,), generator=g)]
    following, q = [], None
    for _ in range(N):
        if q is None:
            q = hidden @ a0.T
        else:
            q = (q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + 1e-6)) @ a1.T
        q = q + embedding[tokens[-1]] @ b_tok.T + bias  # [n, DIM/2]
        following.append(q @ basis.T)
        tokens.append((following[-1] @ head.T).argmax(-1))
    return SpeculatorExamples(hidden, torch.stack(tokens, 1), torch.stack(following, 1)), embedding, head


def test_an_exactly_linear_world_is_fitted_exactly(tmp_path: Path) -> None:
    examples, embedding, head = _linear_world(3000)
    config, tensors = fit_mlp_speculator(examples, embedding, head, N, ridge=1e-9)
    save_mlp_speculator(tmp_path / "fitted", config, tensors)
    assert detect_method(tmp_path / "fitted") == "mlp_speculator"
    speculator = MLPSpeculator(tmp_path / "fitted")  # the published-format loader, untouched
    test, _, _ = _linear_world(200, seed=1)
    drafts = speculator.greedy_drafts(test.hidden, test.tokens[:, 0], N)
    assert chain_agreement(drafts, test.tokens[:, 1:]) == [1.0, 1.0]


def test_chain_agreement_counts_only_unbroken_prefixes() -> None:
    drafts = torch.tensor([[1, 2], [1, 9], [7, 2], [1, 2]])
    truth = torch.tensor([[1, 2], [1, 2], [1, 2], [1, 3]])
    assert chain_agreement(drafts, truth) == [0.75, 1 / 3]


@pytest.mark.default_model
@pytest.mark.e2e
def test_train_speculator_command_saves_a_speculator_that_serves_losslessly(tmp_path: Path, default_model_path) -> None:
    """The command's own verdict is not trusted: the saved speculator is served here and its greedy
    output compared with plain decoding, and it must emit more than one token per target pass."""
    out = tmp_path / "spec"
    done = subprocess.run(
        [sys.executable, "-m", "splitspec", "train-speculator", "--quick", "--output", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["training_positions"] > 100 and len(report["held_out_acceptance_per_position"]) == 2
    assert report["held_out_served_mean_tokens_per_round"] > 1
    assert (out / "config.json").is_file() and (out / "training_report.json").is_file()

    plain = LLM(str(default_model_path))
    spec = {"model": str(out), "num_speculative_tokens": 2, "adaptive": False}
    served = LLM(str(default_model_path), speculative_config=spec)
    prompts = [
        plain.apply_chat_template([{"role": "user", "content": q}])
        for q in ("Write a Python function that reverses a string.", "Name three rivers in Europe.")
    ]
    greedy = SamplingParams(temperature=0, max_tokens=48)
    expected = [o.outputs[0].token_ids for o in plain.generate(prompts, greedy, use_tqdm=False)]
    outputs = served.generate(prompts, greedy, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    rounds = sum(o.spec_stats.num_rounds for o in outputs)
    emitted = sum(len(o.outputs[0].token_ids) for o in outputs)
    assert emitted / rounds > 1, "the speculator's drafts are accepted"
