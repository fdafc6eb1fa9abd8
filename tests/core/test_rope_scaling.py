"""The native runner applies every RoPE scaling it claims exactly as transformers does, whether the
config is spelled the transformers 5 way (rope_parameters) or the 4.x way (rope_scaling + rope_theta)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny_checkpoints import write_tiny_checkpoint
from transformers import AutoModelForCausalLM, LlamaConfig

from splitspec.models.llama import LlamaRunner, supports_natively
from splitspec.models.rope import rope_parameters
from splitspec.models.runner import ForwardInput

ORIGINAL_CONTEXT = 32
NUM_TOKENS = 90  # well past ORIGINAL_CONTEXT, where the scalings differ most from plain RoPE
# transformers 5 spelling, as write_tiny_checkpoint takes it
SCALINGS = {
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "llama3": {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": ORIGINAL_CONTEXT,
    },
    "yarn": {
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 4.0,
        "original_max_position_embeddings": ORIGINAL_CONTEXT,
    },
    "yarn-mscale": {
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 4.0,
        "original_max_position_embeddings": ORIGINAL_CONTEXT,
        "mscale": 0.707,
        "mscale_all_dim": 1.0,
        "beta_fast": 16.0,
        "beta_slow": 2.0,
    },
}
# config.json's rope entries as transformers 4.x checkpoints publish them (Llama-3.1-8B,
# Qwen2.5-7B-Instruct's long-context recipe, an older linear-scaled fine-tune), and what they mean
# in transformers 5's spelling
LEGACY_CONFIGS = {
    "llama3": (
        {
            "rope_theta": 500000.0,
            "rope_scaling": {
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
                "rope_type": "llama3",
            },
        },
        {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ),
    "yarn-legacy-type-key": (
        {
            "rope_theta": 1000000.0,
            "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"},
        },
        {"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0, "original_max_position_embeddings": 32768},
    ),
    "yarn-without-original-context": (
        {"rope_theta": 10000.0, "rope_scaling": {"factor": 2.0, "rope_type": "yarn"}},
        {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0, "original_max_position_embeddings": 4096},
    ),
    "linear": (
        {"rope_theta": 10000.0, "rope_scaling": {"factor": 4.0, "type": "linear"}},
        {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    ),
    "default": (
        {"rope_theta": 10000.0, "rope_scaling": None},
        {"rope_type": "default", "rope_theta": 10000.0},
    ),
}
LLAMA_SHAPE = {"model_type": "llama", "max_position_embeddings": 4096}


def _as_transformers_4_config(path: Path) -> SimpleNamespace:
    """The checkpoint's config as transformers 4.x presents it: config.json's keys as attributes,
    with the RoPE settings split into rope_theta and rope_scaling."""
    config = json.loads((path / "config.json").read_text())
    params = dict(config.pop("rope_parameters"))
    config["rope_theta"] = params.pop("rope_theta")
    if params["rope_type"] != "llama3":  # checkpoints before transformers 4.42 say "type"
        params["type"] = params.pop("rope_type")
    config["rope_scaling"] = params
    return SimpleNamespace(**config)


def _native_logits(runner: LlamaRunner, tokens: list[int]) -> torch.Tensor:
    prefill, rest = tokens[:40], tokens[40:]
    rows = [runner.forward([ForwardInput("s", prefill, len(prefill))])]
    rows += [runner.forward([ForwardInput("s", [t], 1)]) for t in rest[:3]]  # decode steps
    rows.append(runner.forward([ForwardInput("s", rest[3:], len(rest) - 3)]))
    return torch.cat(rows)


@pytest.fixture(scope="module")
def tokens() -> list[int]:
    return torch.randint(0, 256, (NUM_TOKENS,), generator=torch.Generator().manual_seed(0)).tolist()


def _transformers_logits(path: Path, tokens: list[int]) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0]


@pytest.mark.parametrize("spelling", ["transformers-5", "transformers-4"])
@pytest.mark.parametrize("scaling", list(SCALINGS))
def test_native_logits_match_transformers_with_rope_scaling(scaling, spelling, tmp_path, tokens):
    path = write_tiny_checkpoint(tmp_path, seed=3, rope_parameters=dict(SCALINGS[scaling]))
    config = LlamaConfig.from_pretrained(str(path)) if spelling == "transformers-5" else _as_transformers_4_config(path)
    assert supports_natively(config)
    runner = LlamaRunner(path, config, block_size=4, kv_cache_memory_bytes=1 << 20)
    torch.testing.assert_close(_native_logits(runner, tokens), _transformers_logits(path, tokens), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scaling", list(SCALINGS))
def test_each_scaling_changes_the_logits_of_the_test_sequence(scaling, tmp_path, tokens):
    """Guards the test above: were the scaling ignored, the logits would differ far beyond its tolerance."""
    scaled = write_tiny_checkpoint(tmp_path / "scaled", seed=3, rope_parameters=dict(SCALINGS[scaling]))
    theta = SCALINGS[scaling]["rope_theta"]
    plain = write_tiny_checkpoint(
        tmp_path / "plain", seed=3, rope_parameters={"rope_type": "default", "rope_theta": theta}
    )
    difference = (_transformers_logits(scaled, tokens) - _transformers_logits(plain, tokens)).abs().max()
    assert difference > 1e-2


@pytest.mark.parametrize("name", list(LEGACY_CONFIGS))
def test_transformers_4_spelling_reads_as_transformers_5_spelling(name):
    legacy, expected = LEGACY_CONFIGS[name]
    as_read_by_transformers_4 = SimpleNamespace(**LLAMA_SHAPE, **json.loads(json.dumps(legacy)))
    as_read_by_transformers_5 = LlamaConfig(**LLAMA_SHAPE, **json.loads(json.dumps(legacy)))
    assert rope_parameters(as_read_by_transformers_4) == expected
    assert rope_parameters(as_read_by_transformers_5) == expected


def test_a_rope_type_without_a_native_implementation_falls_back_to_transformers():
    config = SimpleNamespace(**LLAMA_SHAPE, rope_theta=10000.0, rope_scaling={"type": "dynamic", "factor": 2.0})
    assert not supports_natively(config)
