"""Where models run: "auto", "cpu", "cuda", "cuda:N", and a clear error where CUDA is missing."""

from __future__ import annotations

import re

import pytest
import torch

from splitspec import LLM, SamplingParams
from splitspec.devices import auto_dtype, resolve_device
from splitspec.errors import SplitspecError

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")


def test_auto_is_the_cpu_without_cuda_and_the_first_gpu_with_it():
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected
    assert resolve_device("cpu") == torch.device("cpu")


@needs_no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_says_so_and_how_to_run_on_the_cpu(device):
    with pytest.raises(
        SplitspecError, match=rf"device '{device}' needs CUDA, but .*; run on the CPU with device='cpu'"
    ):
        resolve_device(device)


@pytest.mark.parametrize("device", ["tpu", "banana", "mps:0"])
def test_other_devices_are_refused_with_the_choices(device):
    with pytest.raises(SplitspecError, match=r'"auto" .*"cpu", "cuda" or "cuda:N"'):
        resolve_device(device)


def test_auto_dtype_is_float32_on_the_cpu_and_the_checkpoint_s_half_precision_on_cuda():
    cuda = torch.device("cuda", 0)
    assert auto_dtype(torch.bfloat16, torch.device("cpu")) == torch.float32
    assert auto_dtype(torch.bfloat16, cuda) == torch.bfloat16
    assert auto_dtype("float16", cuda) == torch.float16


def test_an_explicit_cpu_device_generates_what_auto_does(tiny_llama):
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    prompt = {"prompt_token_ids": [5, 6, 7, 5, 6, 7]}
    spec = {"method": "ngram", "num_speculative_tokens": 3}
    cpu = LLM(str(tiny_llama), speculative_config=spec, device="cpu")
    assert cpu.runner.device == torch.device("cpu") and cpu.runner.dtype == torch.float32
    expected = LLM(str(tiny_llama)).generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids
    assert cpu.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids == expected


@needs_no_cuda
def test_llm_on_cuda_without_cuda_fails_before_loading_anything(tmp_path):
    missing = tmp_path / "not-even-a-checkpoint"
    with pytest.raises(SplitspecError, match="needs CUDA"):
        LLM(str(missing), device="cuda")


@pytest.mark.e2e
def test_the_services_run_where_device_says(tiny_llama, tiny_drafts, tmp_path):
    from e2e_requests import MAX_TOKENS, PROMPTS, generate, greedy_request, token_ids
    from service_stack import running_stack

    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    expected = LLM(str(tiny_llama)).generate([{"prompt_token_ids": PROMPTS[0]}], params, use_tqdm=False)
    with running_stack(
        tiny_llama,
        tmp_path,
        method="draft_model",
        draft_model=tiny_drafts["llama"],
        verifier_args=("--device", "cpu"),
        proposer_args=("--device", "cpu"),
        gateway_args=("--fixed-k",),  # adaptive K may price a draft model as dear as the target: K=0
    ) as stack:
        responses = generate(stack.gateway.address, greedy_request(PROMPTS[0]))
        log = stack.verifier.logs()
    assert token_ids(responses) == expected[0].outputs[0].token_ids
    assert re.search(r"KV cache: \d+ blocks of 16 tokens \(\d+ tokens, \d+ MiB of float32\) on cpu", log), log
    assert responses[-1].speculation.num_draft_tokens > 0


def _splitspec(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "splitspec", *args], capture_output=True, text=True, timeout=300)


@needs_no_cuda
@pytest.mark.e2e
@pytest.mark.parametrize(
    "command",
    [
        ["generate", "hi"],
        ["bench", "--quick"],
        ["train-speculator", "--quick"],
        ["serve-verifier"],
        ["serve-proposer"],
        ["up"],
    ],
    ids=lambda c: c[0],
)
def test_every_command_refuses_cuda_without_cuda_in_one_line(command):
    result = _splitspec(*command, "--device", "cuda")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("splitspec: error: device 'cuda' needs CUDA, but ")
    assert line.endswith("; run on the CPU with device='cpu' (--device cpu)")


def test_running_out_of_gpu_memory_at_load_names_the_settings_to_change(tiny_llama, monkeypatch):
    import splitspec.models.llama
    from splitspec.config import RunnerConfig
    from splitspec.models.loader import load_runner

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(splitspec.models.llama.LlamaRunner, "__init__", out_of_memory)
    with pytest.raises(SplitspecError) as error:
        load_runner(tiny_llama, RunnerConfig(kv_cache_memory_bytes=1 << 30))
    message = str(error.value)
    assert "KV cache of 1024 MiB" in message
    names = ("gpu_memory_utilization", "kv_cache_memory_bytes", "max_model_len", "max_num_seqs")
    assert all(name in message for name in names)
