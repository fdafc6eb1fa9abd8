"""The MLP speculator reads IBM's published checkpoint format and computes the documented formula.

The reference below is a separate, plain float64 NumPy computation of the paper's / vLLM's head
recurrence, written from the formula, not from the module under test.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_checkpoints import write_mlp_speculator

from proposer_svc.mlp_speculator import MLPSpeculator
from splitspec.config import is_mlp_speculator_dir as is_mlp_speculator
from splitspec.errors import SplitspecError

EMB, INNER, VOCAB, N_PREDICT = 24, 32, 50, 3
write_mlp_speculator = partial(
    write_mlp_speculator, emb_dim=EMB, inner_dim=INNER, vocab_size=VOCAB, n_predict=N_PREDICT
)


def reference_heads(folder: Path, hidden: np.ndarray, last_token: int, n: int) -> tuple[list[int], list[np.ndarray]]:
    """One sequence, float64, loops over vector entries where the formula has sums."""
    config = json.loads((folder / "config.json").read_text())
    from safetensors.numpy import load_file

    w = {
        k.removeprefix("speculator."): v.astype(np.float64)
        for k, v in load_file(str(folder / "model.safetensors")).items()
    }
    tied = config["tie_weights"]

    def param(kind: str, i: int) -> np.ndarray:
        if tied:
            i = min(i, 1) if kind == "proj" else 0
        return w[f"{kind}.{i}.weight"] if kind != "ln_bias" else w[f"ln.{i}.bias"]

    def rms(x: np.ndarray) -> np.ndarray:
        return x / math.sqrt(sum(v * v for v in x) / len(x) + 1e-6)

    def gelu(x: np.ndarray) -> np.ndarray:
        return np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])

    state_weight = 0.5 ** (0.5 / config["n_predict"])
    emb_weight = math.sqrt((1 - state_weight**2) * (config["inner_dim"] / 2))
    state = hidden.astype(np.float64)
    if config["scale_input"]:
        state = rms(state) / math.sqrt(2)
    token, tokens, logits = last_token, [], []
    for i in range(n):
        mixed = param("proj", i) @ state + (emb_weight / state_weight) * param("emb", i)[token]
        state = gelu(rms(mixed) * param("ln", i) + param("ln_bias", i))
        scores = param("head", i) @ state
        token = int(np.argmax(scores))
        tokens.append(token)
        logits.append(scores)
    return tokens, logits


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("scale_input", [False, True])
def test_forward_matches_the_documented_formula(tmp_path: Path, tied: bool, scale_input: bool) -> None:
    folder = write_mlp_speculator(
        tmp_path / "spec", tied=tied, scale_input=scale_input, seed=int(tied) * 2 + int(scale_input)
    )
    assert is_mlp_speculator(folder)
    spec = MLPSpeculator(folder)
    g = torch.Generator().manual_seed(7)
    hidden = torch.randn(5, EMB, generator=g) * 3
    last = torch.randint(0, VOCAB, (5,), generator=g)
    tokens, logits = spec.run_heads(hidden, last, N_PREDICT)
    assert tokens.shape == (5, N_PREDICT) and logits.shape == (5, N_PREDICT, VOCAB)
    for b in range(5):
        want_tokens, want_logits = reference_heads(folder, hidden[b].double().numpy(), int(last[b]), N_PREDICT)
        np.testing.assert_allclose(logits[b].double().numpy(), np.stack(want_logits), rtol=1e-4, atol=1e-4)
        assert tokens[b].tolist() == want_tokens
    assert torch.equal(spec.greedy_drafts(hidden, last, 2), tokens[:, :2])


def test_prefixed_names_and_errors(tmp_path: Path) -> None:
    folder = write_mlp_speculator(tmp_path / "prefixed", tied=False, scale_input=True, prefix="speculator.")
    assert MLPSpeculator(folder).n_predict == N_PREDICT
    with pytest.raises(ValueError, match="at most 3"):
        MLPSpeculator(folder).greedy_drafts(torch.zeros(1, EMB), torch.zeros(1, dtype=torch.int64), 4)
    broken = write_mlp_speculator(tmp_path / "broken", tied=False, scale_input=False)
    config = json.loads((broken / "config.json").read_text())
    config["inner_dim"] = INNER + 1
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(SplitspecError, match="has shape"):
        MLPSpeculator(broken)
    assert not is_mlp_speculator(tmp_path)
