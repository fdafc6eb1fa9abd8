"""The drafter loaders read checkpoints laid out exactly as published (tests/published_formats.py says
where each name, key, dtype and shape comes from): the method is detected from the files, every
published tensor is read and matters, and drafting yields in-range tokens of the asked number."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from published_formats import (
    EAGLE_LLAMA3_INSTRUCT_8B,
    LLAMA3_8B_ACCELERATOR,
    LLAMA3_70B_ACCELERATOR,
    PUBLISHED_FORMATS,
    PublishedFormat,
    random_tensors,
    save_published,
    small_config,
    tensor_shapes,
    write_published,
)
from tiny_checkpoints import write_tiny_checkpoint

from proposer_svc.eagle import EagleProposer, EagleRunner
from proposer_svc.mlp_speculator import MLPSpeculator, MLPSpeculatorProposer
from splitspec.config import SpeculationMethod, detect_method
from splitspec.drafts import DraftRequest
from splitspec.models.runner import ForwardInput

MLP_FORMATS = [LLAMA3_8B_ACCELERATOR, LLAMA3_70B_ACCELERATOR]
CACHE = dict(block_size=4, kv_cache_memory_bytes=1 << 20)
TOKENS = [3, 17, 99, 4, 250, 31, 8]


def _ids(formats: list[PublishedFormat]) -> list[str]:
    return [f.hub_id for f in formats]


def _snapshot(tmp_path: Path, name: str = "snapshot") -> Path:
    """Named like a hub cache snapshot (a commit hash), so nothing is inferred from the folder name."""
    return tmp_path / name


def _perturbed(tensors: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    t = tensors[name].float()
    noise = torch.randn(t.shape, generator=torch.Generator().manual_seed(99))
    return {**tensors, name: (t + 0.5 * (t.std() if t.numel() > 1 else 1.0) * noise).to(tensors[name].dtype)}


@pytest.fixture(scope="module")
def eagle_target(tmp_path_factory) -> Path:
    """A Llama target with the head's small dimensions: its output head scores the EAGLE drafts."""
    c = small_config(EAGLE_LLAMA3_INSTRUCT_8B)
    return write_tiny_checkpoint(
        tmp_path_factory.mktemp("target"),
        vocab_size=c["vocab_size"],
        hidden_size=c["hidden_size"],
        num_heads=c["num_attention_heads"],
        num_kv_heads=c["num_key_value_heads"],
        num_layers=1,
    )


@pytest.mark.parametrize("fmt", PUBLISHED_FORMATS.values(), ids=list(PUBLISHED_FORMATS))
def test_published_shapes_add_up_to_the_stated_parameter_count(fmt):
    """Checks the copied shape formulas against an independent published number (authors round it)."""
    shapes = tensor_shapes(fmt, fmt.config)
    count = sum(math.prod(shape) for name, shape in shapes.items() if fmt.counted(name))
    assert abs(count - fmt.stated_parameters) < 0.01 * fmt.stated_parameters


@pytest.mark.parametrize(
    "fmt, method",
    [
        (LLAMA3_8B_ACCELERATOR, SpeculationMethod.MLP_SPECULATOR),
        (LLAMA3_70B_ACCELERATOR, SpeculationMethod.MLP_SPECULATOR),
        (EAGLE_LLAMA3_INSTRUCT_8B, SpeculationMethod.EAGLE),
    ],
    ids=lambda v: v.hub_id if isinstance(v, PublishedFormat) else v.value,
)
def test_the_method_is_detected_from_the_published_files(fmt, method, tmp_path):
    path = write_published(fmt, _snapshot(tmp_path), dtype=fmt.dtypes[0])
    assert detect_method(path) == method


@pytest.mark.parametrize("num_shards", [1, 2])
@pytest.mark.parametrize("dtype", LLAMA3_8B_ACCELERATOR.dtypes, ids=str)
@pytest.mark.parametrize("fmt", MLP_FORMATS, ids=_ids(MLP_FORMATS))
def test_mlp_speculator_drafts_from_the_published_layout(fmt, dtype, num_shards, tmp_path):
    config = small_config(fmt)
    path = write_published(fmt, _snapshot(tmp_path), dtype=dtype, num_shards=num_shards)
    proposer = MLPSpeculatorProposer(MLPSpeculator(path))
    states = torch.randn(2, config["emb_dim"], generator=torch.Generator().manual_seed(1))
    requests = [
        DraftRequest("a", TOKENS, num_tokens=config["n_predict"], hidden_state=states[0]),
        DraftRequest("b", TOKENS[:2], num_tokens=2, hidden_state=states[1]),
    ]
    drafts = proposer.propose(requests)
    assert [len(d.token_ids) for d in drafts] == [config["n_predict"], 2]
    assert all(0 <= t < config["vocab_size"] for d in drafts for t in d.token_ids)


@pytest.mark.parametrize("fmt", MLP_FORMATS, ids=_ids(MLP_FORMATS))
def test_every_published_mlp_speculator_tensor_changes_the_logits(fmt, tmp_path):
    """A tensor the loader skipped, or read under the wrong head, would leave the logits unchanged."""
    config = small_config(fmt)
    tensors = random_tensors(fmt, seed=0, dtype=fmt.dtypes[0])
    state = torch.randn(1, config["emb_dim"], generator=torch.Generator().manual_seed(1))

    def logits(weights: dict[str, torch.Tensor], folder: str) -> torch.Tensor:
        spec = MLPSpeculator(save_published(fmt, tmp_path / folder, weights))
        return spec.run_heads(state, torch.tensor([TOKENS[-1]]), config["n_predict"])[1]  # [1, n_predict, vocab]

    baseline = logits(tensors, "published")
    unused = [
        name for i, name in enumerate(fmt.tensors) if torch.equal(logits(_perturbed(tensors, name), f"p{i}"), baseline)
    ]
    assert unused == []


@pytest.mark.parametrize("dtype", EAGLE_LLAMA3_INSTRUCT_8B.dtypes, ids=str)
def test_eagle_drafts_from_the_published_layout(dtype, eagle_target, tmp_path):
    config = small_config(EAGLE_LLAMA3_INSTRUCT_8B)
    path = write_published(EAGLE_LLAMA3_INSTRUCT_8B, _snapshot(tmp_path), dtype=dtype)
    proposer = EagleProposer(EagleRunner(path, eagle_target, **CACHE))
    states = torch.randn(len(TOKENS) - 1, config["hidden_size"], generator=torch.Generator().manual_seed(1))
    draft = proposer.propose([DraftRequest("s", TOKENS, num_tokens=3, hidden_state=states)])[0]
    assert len(draft.token_ids) == 3
    assert all(0 <= t < config["vocab_size"] for t in draft.token_ids)


def test_every_published_eagle_tensor_changes_the_predicted_state(eagle_target, tmp_path):
    fmt = EAGLE_LLAMA3_INSTRUCT_8B
    tensors = random_tensors(fmt, seed=0, dtype=fmt.dtypes[0])
    states = torch.randn(len(TOKENS) - 1, small_config(fmt)["hidden_size"], generator=torch.Generator().manual_seed(1))

    def predicted_state(weights: dict[str, torch.Tensor], folder: str) -> torch.Tensor:
        runner = EagleRunner(save_published(fmt, tmp_path / folder, weights), eagle_target, **CACHE)
        return runner.step([ForwardInput("s", TOKENS[1:], 1)], states)[1]  # [1, hidden]

    baseline = predicted_state(tensors, "published")
    unused = [
        name
        for i, name in enumerate(fmt.tensors)
        if torch.equal(predicted_state(_perturbed(tensors, name), f"p{i}"), baseline)
    ]
    assert unused == []
