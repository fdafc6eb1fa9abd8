"""The native runner computes what transformers computes, for every Llama-family variant it claims."""

from __future__ import annotations

import pytest
import torch
from tiny_checkpoints import write_tiny_checkpoint
from transformers import AutoModelForCausalLM

from splitspec.config import RunnerConfig
from splitspec.models.llama import LlamaRunner
from splitspec.models.loader import load_runner
from splitspec.models.runner import ForwardInput

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
VARIANTS = {
    "llama-untied": dict(arch="llama"),
    "llama-tied": dict(arch="llama", tie_word_embeddings=True),
    "llama-mha": dict(arch="llama", num_kv_heads=4),
    "llama3-rope-scaling": dict(arch="llama", rope_parameters=LLAMA3_ROPE),
    "qwen2-qkv-bias": dict(arch="qwen2"),
    "qwen3-qk-norm": dict(arch="qwen3"),
    "mistral-sliding-window": dict(arch="mistral", sliding_window=16),
    "granite-multipliers": dict(
        arch="granite", embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.2, logits_scaling=2.0
    ),
}


def _write_variant(path, name):
    return write_tiny_checkpoint(path, seed=7, **VARIANTS[name])


def _chunked_logits(runner, tokens: list[int], cuts: list[int]) -> torch.Tensor:
    rows, start = [], 0
    for end in cuts + [len(tokens)]:
        rows.append(runner.forward([ForwardInput("s", tokens[start:end], end - start)]))
        start = end
    return torch.cat(rows)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_native_runner_logits_match_transformers(name, tmp_path):
    path = _write_variant(tmp_path, name)
    runner = load_runner(path, RunnerConfig(block_size=4, kv_cache_memory_bytes=1 << 20))
    assert isinstance(runner, LlamaRunner)
    hf = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    tokens = torch.randint(0, 256, (90,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        expected = hf(torch.tensor([tokens])).logits[0]
    got = _chunked_logits(runner, tokens, [13, 14, 30, 61])  # prefill, single tokens, multi-token chunks
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_rolled_back_positions_are_recomputed_from_new_tokens(tiny_llama):
    runner = load_runner(tiny_llama, RunnerConfig(block_size=4, kv_cache_memory_bytes=1 << 20))
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    prefix, rejected, accepted = [5, 9, 11, 3, 8, 1, 7], [40, 41, 42, 43, 44], [60, 61, 62]
    runner.forward([ForwardInput("s", prefix + rejected, 1)])
    runner.truncate("s", len(prefix))
    got = runner.forward([ForwardInput("s", accepted, len(accepted))])
    with torch.no_grad():
        expected = hf(torch.tensor([prefix + accepted])).logits[0, -len(accepted) :]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_ragged_batch_equals_each_sequence_alone(tiny_qwen2):
    runner = load_runner(tiny_qwen2, RunnerConfig(block_size=4, kv_cache_memory_bytes=1 << 20))
    seqs = {"a": list(range(10, 47)), "b": [3, 4], "c": list(range(100, 109))}
    alone = {k: runner.forward([ForwardInput(f"alone-{k}", v, len(v))]) for k, v in seqs.items()}
    together = runner.forward([ForwardInput(k, v, len(v)) for k, v in seqs.items()])
    torch.testing.assert_close(together, torch.cat(list(alone.values())), rtol=1e-4, atol=1e-4)


def test_sharded_checkpoint_loads_like_a_single_file(tmp_path, tiny_llama):
    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(str(tiny_llama)).save_pretrained(str(sharded), max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    tokens = list(range(20, 40))
    single = load_runner(tiny_llama, RunnerConfig(kv_cache_memory_bytes=1 << 20)).forward(
        [ForwardInput("s", tokens, 20)]
    )
    multi = load_runner(sharded, RunnerConfig(kv_cache_memory_bytes=1 << 20)).forward([ForwardInput("s", tokens, 20)])
    torch.testing.assert_close(single, multi)


def test_other_model_types_use_the_transformers_backend(tiny_gpt2):
    from splitspec.models.hf_backend import HFRunner

    runner = load_runner(tiny_gpt2)
    assert isinstance(runner, HFRunner)
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2)).eval()
    tokens = list(range(50, 80))
    got = torch.cat(
        [runner.forward([ForwardInput("s", tokens[:20], 20)]), runner.forward([ForwardInput("s", tokens[20:], 10)])]
    )
    with torch.no_grad():
        expected = hf(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["native", "transformers"])
def test_layer_inputs_are_transformers_hidden_states(tmp_path, backend):
    """aux_layers (EAGLE-3's target states): layer i's input is transformers' hidden_states[i] (index 0
    the embedding), ascending whatever order they are asked in, and the final state comes last."""
    path = write_tiny_checkpoint(tmp_path, "llama", num_layers=6, seed=5)
    runner = load_runner(path, RunnerConfig(backend=backend, block_size=4, kv_cache_memory_bytes=1 << 20))
    hf = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    tokens = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        states = hf(torch.tensor([tokens]), output_hidden_states=True).hidden_states
    expected = torch.cat([states[i][0] for i in (0, 2, 5)] + [states[-1][0]], -1)
    first = runner.forward_with_hidden([ForwardInput("s", tokens[:25], 1, 25)], (5, 0, 2))[1]
    rest = runner.forward_with_hidden([ForwardInput("s", tokens[25:], 3, 15)], (2, 5, 0))[1]
    torch.testing.assert_close(torch.cat([first, rest]), expected, rtol=1e-4, atol=1e-4)
