"""On a CUDA device: the target on the GPU keeps every output token (run with `pytest -m gpu`).

In float32 the near-tie rule is the CPU tests' (top-2 logits within 1e-4). In bfloat16 a pass of K+1
tokens and a pass of one token round differently: bfloat16 keeps 8 bits of mantissa, so a logit near
10 moves by up to about 0.04 per rounding; a difference passes only where the float32 target's top-2
logits lie within BF16_NEAR_TIE.

Most tests here compare the GPU path with itself (speculative with plain, graphs with eager, Triton with
PyTorch), where a bug both sides share (weight loading, rotary tables, a CUDA-only branch) passes. The
float32 tests against transformers' own `generate` on the CPU do not share it: transformers reads the
checkpoint, builds its rotary tables and runs its kernels by itself. Two devices sum in different orders,
so there a difference passes only at a float32 near-tie of FLOAT32_CROSS_DEVICE_NEAR_TIE.
"""

from __future__ import annotations

import pytest
import torch
from greedy_reference import NEAR_TIE, assert_same_or_near_tie, hf_greedy
from transformers import AutoModelForCausalLM

from splitspec import LLM, SamplingParams

pytestmark = pytest.mark.gpu

BF16_NEAR_TIE = 0.25
FLOAT32_CROSS_DEVICE_NEAR_TIE = 1e-3
PROMPTS = [
    [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6],
    [17, 3],
    list(range(30, 90)) + list(range(30, 50)),
    [100, 101, 102, 100, 101, 102, 100, 101, 102, 100, 101],
]
GREEDY = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)


def _token_ids(llm: LLM, prompts, params) -> list[list[int]]:
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outputs]


@pytest.mark.parametrize("dtype, near_tie", [("float32", NEAR_TIE), ("bfloat16", BF16_NEAR_TIE)])
@pytest.mark.parametrize("method", ["ngram", "draft_model"])
def test_greedy_on_the_gpu_is_plain_decoding(tiny_llama, tiny_drafts, method, dtype, near_tie):
    spec = {"method": method, "num_speculative_tokens": 3, "adaptive": False}
    if method == "draft_model":
        spec["model"] = str(tiny_drafts["llama"])
    plain = LLM(str(tiny_llama), device="cuda", dtype=dtype)
    speculative = LLM(str(tiny_llama), speculative_config=spec, device="cuda", dtype=dtype)
    assert speculative.runner.device.type == "cuda" and str(speculative.runner.dtype) == f"torch.{dtype}"
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    for prompt, got, expected in zip(
        PROMPTS, _token_ids(speculative, PROMPTS, GREEDY), _token_ids(plain, PROMPTS, GREEDY)
    ):
        assert_same_or_near_tie(hf, prompt, got, expected, near_tie)


@pytest.mark.parametrize("method", [None, "ngram", "draft_model"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_float32_on_the_gpu_is_transformers_float32_generate(tiny_checkpoints, tiny_drafts, arch, method):
    """The served path (Triton kernels, CUDA graphs, device sampling) against an independent reference."""
    path = tiny_checkpoints[arch]
    spec = None if method is None else {"method": method, "num_speculative_tokens": 3, "adaptive": False}
    if method == "draft_model":
        spec["model"] = str(tiny_drafts[arch])
    llm = LLM(str(path), speculative_config=spec, device="cuda", dtype="float32")
    assert llm.runner.kernels.name == "triton" and llm.runner.graphs is not None
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    for prompt, got in zip(PROMPTS, _token_ids(llm, PROMPTS, GREEDY)):
        expected = hf_greedy(hf, prompt, GREEDY.max_tokens)
        assert_same_or_near_tie(hf, prompt, got, expected, FLOAT32_CROSS_DEVICE_NEAR_TIE)


@pytest.mark.default_model
def test_the_default_model_in_float32_on_the_gpu_is_transformers_float32_generate(default_model_path):
    plain = LLM(str(default_model_path), device="cuda", dtype="float32")
    tokenizer = plain.get_tokenizer()
    questions = ["Write a Python function to calculate fibonacci numbers.", "List three primary colors."]
    prompts = [tokenizer.encode(plain.apply_chat_template([{"role": "user", "content": q}])) for q in questions]
    hf = AutoModelForCausalLM.from_pretrained(str(default_model_path), dtype=torch.float32).eval()
    for prompt, got in zip(prompts, _token_ids(plain, prompts, GREEDY)):
        assert_same_or_near_tie(
            hf, prompt, got, hf_greedy(hf, prompt, GREEDY.max_tokens), FLOAT32_CROSS_DEVICE_NEAR_TIE
        )


def test_the_default_model_on_the_gpu_in_its_own_dtype(default_model_path):
    hf = AutoModelForCausalLM.from_pretrained(str(default_model_path)).eval()
    plain = LLM(str(default_model_path), device="cuda")
    spec = {"method": "ngram", "num_speculative_tokens": 5, "adaptive": False}
    speculative = LLM(str(default_model_path), speculative_config=spec, device="cuda")
    tokenizer = plain.get_tokenizer()
    questions = ["Write a Python function to calculate fibonacci numbers.", "List three primary colors."]
    prompts = [tokenizer.encode(plain.apply_chat_template([{"role": "user", "content": q}])) for q in questions]
    for prompt, got, expected in zip(
        prompts, _token_ids(speculative, prompts, GREEDY), _token_ids(plain, prompts, GREEDY)
    ):
        assert_same_or_near_tie(hf, prompt, got, expected, BF16_NEAR_TIE)


def test_seeded_sampling_on_the_gpu_ignores_batching_and_ngram_drafts(tiny_llama):
    params = [SamplingParams(temperature=0.9, top_p=0.95, max_tokens=24, ignore_eos=True, seed=s) for s in (1, 2, 3, 4)]
    plain = LLM(str(tiny_llama), device="cuda", dtype="float32")
    together = _token_ids(plain, PROMPTS, params)
    alone = [_token_ids(plain, [p], [s])[0] for p, s in zip(PROMPTS, params)]
    spec = {"method": "ngram", "num_speculative_tokens": 3}
    ngram = _token_ids(LLM(str(tiny_llama), speculative_config=spec, device="cuda", dtype="float32"), PROMPTS, params)
    assert together == alone == ngram


@pytest.mark.parametrize("dtype, near_tie", [("float32", NEAR_TIE), ("bfloat16", BF16_NEAR_TIE)])
def test_cuda_graph_replays_give_the_eager_passes_output(tiny_llama, dtype, near_tie):
    """Decode and verify passes replayed from captured graphs, at several batch buckets and with new
    data in each replay, against the same passes run kernel by kernel."""
    spec = {"method": "ngram", "num_speculative_tokens": 3, "adaptive": False}
    graphed = LLM(str(tiny_llama), speculative_config=spec, device="cuda", dtype=dtype)
    eager = LLM(str(tiny_llama), speculative_config=spec, device="cuda", dtype=dtype, enforce_eager=True)
    assert eager.runner.graphs is None
    sampled = [SamplingParams(temperature=0.8, max_tokens=24, ignore_eos=True, seed=s) for s in range(4)]
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    for prompts in (PROMPTS, PROMPTS[:1], PROMPTS[1:3]):
        for prompt, got, expected in zip(
            prompts, _token_ids(graphed, prompts, GREEDY), _token_ids(eager, prompts, GREEDY)
        ):
            assert_same_or_near_tie(hf, prompt, got, expected, near_tie)
    assert graphed.runner.graphs.num_captured >= 3, "decode and verify passes at several buckets"
    if dtype == "float32":
        assert _token_ids(graphed, PROMPTS, sampled) == _token_ids(eager, PROMPTS, sampled)


@pytest.mark.e2e
def test_the_services_with_the_verifier_on_the_gpu(tiny_llama, tmp_path):
    from e2e_requests import MAX_TOKENS, generate, greedy_request, token_ids
    from service_stack import running_stack

    plain = LLM(str(tiny_llama), device="cuda")  # the verifier's dtype: "auto", bfloat16 on CUDA
    expected = _token_ids(plain, PROMPTS[:1], SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True))
    with running_stack(tiny_llama, tmp_path, verifier_args=("--device", "cuda")) as stack:
        got = token_ids(generate(stack.gateway.address, greedy_request(PROMPTS[0])))
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    assert_same_or_near_tie(hf, PROMPTS[0], got, expected[0], BF16_NEAR_TIE)


def test_triton_kernels_on_the_gpu_give_the_pytorch_references_output(tiny_llama):
    """Attention, KV-cache writes and batched rejection sampling through Triton, natively compiled."""
    spec = {"method": "ngram", "num_speculative_tokens": 3, "adaptive": False}
    outputs = {}
    for backend in ("triton", "torch"):
        llm = LLM(str(tiny_llama), speculative_config=spec, device="cuda", dtype="float32", kernel_backend=backend)
        assert llm.runner.kernels.name == backend
        sampled = [SamplingParams(temperature=0.8, max_tokens=24, ignore_eos=True, seed=s) for s in range(4)]
        outputs[backend] = (_token_ids(llm, PROMPTS, GREEDY), _token_ids(llm, PROMPTS, sampled))
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    for prompt, got, expected in zip(PROMPTS, outputs["triton"][0], outputs["torch"][0]):
        assert_same_or_near_tie(hf, prompt, got, expected)
    assert outputs["triton"][1] == outputs["torch"][1]


def test_fused_kernels_on_the_gpu_round_where_the_references_round():
    """In bf16 on a GPU (round to nearest, unlike the interpreter): the fused residual add bit for bit;
    the rotary kernel and the norm within a bf16 ulp of each rounding; attention split over the context
    (flash-decoding) as the reference, at 1 and 8 parts."""
    import random

    import torch
    from paged_layouts import _layout

    from splitspec_kernels.paged_attention import AttentionBatch, paged_attention_reference, paged_attention_triton
    from splitspec_kernels.rms_norm import add_rms_norm_reference, add_rms_norm_triton
    from splitspec_kernels.rotary import rotate_heads_reference, rotate_heads_triton

    g = torch.Generator(device="cuda").manual_seed(0)
    bf16 = dict(dtype=torch.bfloat16, device="cuda")
    qkv = torch.randn(9, 48 * 128, generator=g, **bf16)
    angles = torch.rand(9, 1, 128, generator=g, device="cuda") * 6.3
    cos, sin = angles.cos().to(torch.bfloat16), angles.sin().to(torch.bfloat16)
    want, got = qkv.clone(), qkv.clone()
    rotate_heads_reference(want, cos, sin, 40, 128)
    rotate_heads_triton(got, cos, sin, 40, 128)
    torch.testing.assert_close(got, want, rtol=3.2e-2, atol=3.2e-2)
    x, delta, weight = (torch.randn(9, 4096, generator=g, **bf16) for _ in range(3))
    (want_total, want_normed), (got_total, got_normed) = (
        add_rms_norm_reference(x, delta, weight[0], 1e-5),
        add_rms_norm_triton(x, delta, weight[0], 1e-5),
    )
    assert torch.equal(got_total, want_total)
    torch.testing.assert_close(got_normed, want_normed, rtol=1.6e-2, atol=1.6e-2)

    tables, seq_lens, slots = _layout(random.Random(0), [1000, 37], [9, 1], 16, 80)
    batch = AttentionBatch.build(tables, seq_lens, [9, 1], slots, device="cuda")
    key_cache, value_cache = (torch.randn(80, 16, 8, 128, generator=g, **bf16) for _ in range(2))
    query = torch.randn(10, 32, 128, generator=g, **bf16)
    want = paged_attention_reference(query.float(), key_cache.float(), value_cache.float(), batch, 128**-0.5)
    for splits in (1, 8):
        got = paged_attention_triton(query, key_cache, value_cache, batch, 128**-0.5, num_splits=splits)
        torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("kernel_backend", ["triton", "torch"])
def test_the_device_sampler_never_waits_for_the_gpu(kernel_backend):
    """Building the batch and sampling it queue work on the GPU without one host sync; the copy of
    the committed ids is the pass's only one. Decisions equal the CPU sampler's."""
    import torch
    from verify_requests import random_verify_requests

    from splitspec_kernels.dispatch import select_kernels
    from verifier_svc.rejection_sampler import build_rejection_batch, verify

    requests = random_verify_requests(0, vocab=4099, num_seqs=16, max_drafts=6)
    expected = [(r.num_accepted, r.token_ids) for r in map(verify, requests)]
    logits = torch.cat([r.logits for r in requests]).cuda()
    row = 0
    for r in requests:
        r.logits, row = logits[row : row + len(r.draft_token_ids) + 1], row + len(r.draft_token_ids) + 1
    rejection_sample = select_kernels(kernel_backend, "cuda").rejection_sample
    rejection_sample(build_rejection_batch(requests))  # warm-up: compilation may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        accepted, tokens = rejection_sample(build_rejection_batch(requests))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    got = [(int(a), [t for t in row.tolist() if t >= 0]) for a, row in zip(accepted.cpu(), tokens.cpu())]
    assert got == expected


def test_gpu_memory_utilization_sizes_the_kv_cache(default_model_path):
    import torch

    total = torch.cuda.mem_get_info()[1]
    small = LLM(str(default_model_path), device="cuda", gpu_memory_utilization=0.3, max_model_len=2048)
    small_bytes = small.runner.kv_cache_bytes
    assert 0 < small_bytes < 0.3 * total
    del small
    torch.cuda.empty_cache()
    large = LLM(
        str(default_model_path), device="cuda", gpu_memory_utilization=0.6, max_model_len=2048, max_num_seqs=1024
    )
    assert large.runner.kv_cache_bytes > small_bytes + 0.25 * total
    assert torch.cuda.memory_reserved() < 0.6 * total


@pytest.mark.skipif("not __import__('torch').cuda.device_count() >= 2", reason="needs two CUDA devices")
def test_two_ranks_over_nccl_give_one_rank_s_output(tiny_llama):
    """Tensor parallelism on CUDA: NCCL between cuda:0 and cuda:1, in float32 so that only near-ties
    may differ."""
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    spec = {"method": "ngram", "num_speculative_tokens": 3, "adaptive": False}
    one = _token_ids(LLM(str(tiny_llama), speculative_config=spec, device="cuda", dtype="float32"), PROMPTS, GREEDY)
    two = LLM(str(tiny_llama), speculative_config=spec, device="cuda", dtype="float32", tensor_parallel_size=2)
    try:
        for prompt, got, expected in zip(PROMPTS, _token_ids(two, PROMPTS, GREEDY), one):
            assert_same_or_near_tie(hf, prompt, got, expected)
    finally:
        two.close()
