"""The KV cache's share of a GPU (gpu_memory_utilization), as pure arithmetic, and the profiling pass,
which runs on any device."""

from __future__ import annotations

import pytest
import torch

from splitspec.config import RunnerConfig
from splitspec.errors import SplitspecError
from splitspec.models.kv_budget import PROFILE_ROWS_PER_SEQUENCE, kv_cache_budget, profile_inputs
from splitspec.models.loader import load_runner
from splitspec.models.runner import ForwardInput

GIB = 1 << 30


@pytest.mark.parametrize("max_model_len,max_num_seqs", [(2048, 64), (100, 64), (16, 1), (5, 8), (4096, 3)])
def test_profile_pass_is_as_large_as_the_limits_allow(max_model_len: int, max_num_seqs: int) -> None:
    inputs = profile_inputs(max_model_len, max_num_seqs)
    lengths = [len(i.token_ids) for i in inputs]
    assert sum(lengths) == max_model_len, "as many tokens as one full-length prompt"
    assert max(lengths) <= max_model_len and min(lengths) >= 1
    assert len(inputs) == min(max_num_seqs, max(1, max_model_len // min(PROFILE_ROWS_PER_SEQUENCE, max_model_len)))
    assert all(i.num_logits == min(len(i.token_ids), PROFILE_ROWS_PER_SEQUENCE) for i in inputs)
    assert len({i.seq_id for i in inputs}) == len(inputs)


def test_budget_is_the_fraction_less_what_is_in_use_and_the_peak() -> None:
    budget = kv_cache_budget(
        total=80 * GIB, utilization=0.9, in_use=17 * GIB, activation_peak=3 * GIB, bytes_per_block=1 << 20
    )
    assert budget == int(80 * GIB * 0.9) - 20 * GIB


@pytest.mark.parametrize("utilization", [0.0, -0.5, 1.5])
def test_utilization_outside_zero_to_one_is_refused(utilization: float) -> None:
    with pytest.raises(SplitspecError, match="gpu_memory_utilization must be in"):
        kv_cache_budget(total=GIB, utilization=utilization, in_use=0, activation_peak=0, bytes_per_block=1)


def test_no_room_for_one_block_names_the_settings_to_change() -> None:
    with pytest.raises(SplitspecError) as error:
        kv_cache_budget(total=16 * GIB, utilization=0.5, in_use=7 * GIB, activation_peak=GIB, bytes_per_block=1 << 20)
    message = str(error.value)
    for name in ("gpu_memory_utilization=0.5", "max_model_len", "max_num_seqs", "kv_cache_memory_bytes"):
        assert name in message


def test_profile_pass_leaves_the_runner_s_cache_as_it_was(tiny_llama) -> None:
    config = RunnerConfig(block_size=4, kv_cache_memory_bytes=1 << 20, max_model_len=64)
    profiled, untouched = load_runner(tiny_llama, config), load_runner(tiny_llama, config)
    for runner in (profiled, untouched):
        runner.forward([ForwardInput("kept", [5, 6, 7, 8, 9], 1)])
    blocks, free = profiled.allocator.num_blocks, profiled.num_free_blocks
    assert profiled.profile_pass(max_num_seqs=4) == 0  # the CPU counts no peak
    assert (profiled.allocator.num_blocks, profiled.num_free_blocks) == (blocks, free)
    assert profiled.cached_length("kept") == 5
    step = [ForwardInput("kept", [10, 11], 2)]
    assert torch.equal(profiled.forward(step), untouched.forward(step)), "the profile pass wrote into the cache"


def test_the_cpu_default_is_one_gib(tiny_llama) -> None:
    runner = load_runner(tiny_llama, RunnerConfig(max_num_seqs=100_000))
    assert runner.kv_cache_bytes <= GIB and runner.kv_cache_bytes > GIB - runner.bytes_per_block
