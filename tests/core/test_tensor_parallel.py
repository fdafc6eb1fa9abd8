"""Tensor parallelism on the CPU (gloo): the target split over N worker processes gives the output
one process gives, and its processes come and go cleanly."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from greedy_reference import assert_same_or_near_tie, hf_greedy
from service_stack import child_pids, process_gone
from tiny_checkpoints import write_tiny_checkpoint
from transformers import AutoModelForCausalLM

from splitspec import LLM, SamplingParams
from splitspec.errors import SplitspecError

pytestmark = pytest.mark.slow

MAX_TOKENS = 24
PROMPTS = [
    [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6],
    [17, 3],
    list(range(30, 90)) + list(range(30, 50)),
    [100, 101, 102, 100, 101, 102, 100, 101, 102, 100, 101],
]
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _token_ids(llm: LLM, prompts, params, batch_size: int) -> list[list[int]]:
    outputs = []
    for start in range(0, len(prompts), batch_size):
        batch = [{"prompt_token_ids": p} for p in prompts[start : start + batch_size]]
        chosen = params[start : start + batch_size] if isinstance(params, list) else params
        outputs += llm.generate(batch, chosen, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outputs]


def _close(llm: LLM) -> None:
    llm.close()
    del llm
    gc.collect()


@pytest.fixture(scope="module")
def tiny_gqa(tmp_path_factory) -> Path:
    """One KV head for four query heads: at two ranks and more the KV head is replicated."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_gqa"), "llama", num_kv_heads=1, seed=5)


@pytest.mark.parametrize("method", ["ngram", "draft_model"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gqa"])
def test_greedy_with_two_ranks_is_one_rank_and_transformers(arch, method, tiny_checkpoints, tiny_drafts, tiny_gqa):
    path = tiny_gqa if arch == "gqa" else tiny_checkpoints[arch]
    spec = {"method": method, "num_speculative_tokens": 3, "adaptive": False}
    if method == "draft_model":
        spec["model"] = str(tiny_drafts["llama" if arch == "gqa" else arch])
    hf = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    one = LLM(str(path), speculative_config=spec)
    single = _token_ids(one, PROMPTS, GREEDY, batch_size=4)
    two = LLM(str(path), speculative_config=spec, tensor_parallel_size=2)
    try:
        assert two.runner.tp.size == 2
        for batch_size in (1, 4):
            for prompt, got, own in zip(PROMPTS, _token_ids(two, PROMPTS, GREEDY, batch_size), single):
                assert_same_or_near_tie(hf, prompt, got, own)
                assert_same_or_near_tie(hf, prompt, got, hf_greedy(hf, prompt, MAX_TOKENS))
    finally:
        _close(two)


def test_four_ranks_replicate_kv_heads_and_keep_the_output(tiny_llama):
    """The tiny Llama has 2 KV heads: at four ranks each is held by two."""
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    llm = LLM(
        str(tiny_llama),
        speculative_config={"method": "ngram", "num_speculative_tokens": 3, "adaptive": False},
        tensor_parallel_size=4,
    )
    try:
        assert llm.runner.kv_heads == 1
        for prompt, got in zip(PROMPTS, _token_ids(llm, PROMPTS, GREEDY, batch_size=4)):
            assert_same_or_near_tie(hf, prompt, got, hf_greedy(hf, prompt, MAX_TOKENS))
    finally:
        _close(llm)


def test_seeded_sampling_with_two_ranks_is_one_rank(tiny_llama):
    params = [SamplingParams(temperature=0.9, top_p=0.95, top_k=50, max_tokens=MAX_TOKENS, ignore_eos=True, seed=s)
              for s in range(len(PROMPTS))]  # fmt: skip
    spec = {"method": "ngram", "num_speculative_tokens": 3}
    expected = _token_ids(LLM(str(tiny_llama), speculative_config=spec), PROMPTS, params, batch_size=4)
    llm = LLM(str(tiny_llama), speculative_config=spec, tensor_parallel_size=2)
    try:
        assert _token_ids(llm, PROMPTS, params, batch_size=4) == expected
    finally:
        _close(llm)


def test_hidden_states_come_out_of_the_sharded_runner_unchanged(tiny_llama):
    from splitspec.models.runner import ForwardInput

    tokens = list(range(40, 70))
    one = LLM(str(tiny_llama))
    logits, hidden = (t.clone() for t in one.runner.forward_with_hidden([ForwardInput("s", tokens, 3, len(tokens))]))
    two = LLM(str(tiny_llama), tensor_parallel_size=2)
    try:
        got_logits, got_hidden = two.runner.forward_with_hidden([ForwardInput("s", tokens, 3, len(tokens))])
        import torch

        torch.testing.assert_close(got_hidden, hidden, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got_logits, logits, rtol=1e-4, atol=1e-4)
    finally:
        _close(two)


@pytest.mark.parametrize(
    "size,expected",
    [(3, "tensor_parallel_size=3 does not divide this model's 4 attention heads"), (0, "tensor_parallel_size")],
)
def test_sizes_that_do_not_fit_the_model_are_refused_with_the_numbers(tiny_llama, size, expected):
    with pytest.raises(SplitspecError, match=expected):
        LLM(str(tiny_llama), tensor_parallel_size=size)


def test_draft_tensor_parallel_size_other_than_one_is_refused(tiny_llama):
    with pytest.raises(SplitspecError, match="draft tensor parallel size 2"):
        LLM(str(tiny_llama), speculative_model=str(tiny_llama), num_speculative_tokens=3,
            speculative_draft_tensor_parallel_size=2)  # fmt: skip


def test_workers_die_with_a_killed_driver(tiny_llama, tmp_path):
    """SIGKILL the process that owns the workers: none of them is left behind."""
    script = (
        "import sys, time\nfrom splitspec import LLM\n"
        f"llm = LLM({str(tiny_llama)!r}, tensor_parallel_size=2)\n"
        "print('ready', flush=True)\ntime.sleep(600)\n"
    )
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline().strip() == "ready"
        workers = child_pids(driver.pid)
        assert len(workers) == 1
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        deadline = time.monotonic() + 30
        while not all(process_gone(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(process_gone(w) for w in workers), "a worker outlived its driver"
    finally:
        driver.kill()
        driver.wait()


def test_a_dead_worker_fails_the_next_pass_instead_of_hanging(tiny_llama):
    from splitspec.models.tp_workers import TensorParallelWorkerLost

    llm = LLM(str(tiny_llama), tensor_parallel_size=2)
    try:
        [worker] = llm.runner.workers.processes
        worker.kill()
        worker.wait(timeout=10)
        start = time.monotonic()
        with pytest.raises(TensorParallelWorkerLost, match="rank 1"):
            llm.generate([{"prompt_token_ids": PROMPTS[0]}], GREEDY, use_tqdm=False)
        assert time.monotonic() - start < 30
        assert not llm.runner.healthy()
    finally:
        _close(llm)
    assert not child_pids(os.getpid()), "the group left a process behind"


def test_a_model_dropped_without_close_leaves_nothing_behind(tiny_llama):
    """Collecting a tensor-parallel LLM kills its workers, and the next one can start."""
    llm = LLM(str(tiny_llama), tensor_parallel_size=2)
    workers = [p.pid for p in llm.runner.workers.processes]
    del llm
    gc.collect()
    assert all(process_gone(w) for w in workers)
    again = LLM(str(tiny_llama), tensor_parallel_size=2)
    try:
        assert len(_token_ids(again, PROMPTS[:1], GREEDY, batch_size=1)[0]) == MAX_TOKENS
    finally:
        _close(again)


def test_the_seed_example_runs_at_four_ranks(tmp_path, default_model_path):
    """examples/tensor_parallel.py as the seeds write it (tensor_parallel_size=4), on a local checkpoint:
    random weights with the default model's tokenizer, and heads that four ranks divide."""
    model = write_tiny_checkpoint(tmp_path / "model", "llama", vocab_size=49152, num_kv_heads=2, seed=7)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (default_model_path / name).is_file():
            shutil.copy(default_model_path / name, model / name)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "tensor_parallel.py"), str(model)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("Prompt: 'The future of AI is', Generated text: ")
