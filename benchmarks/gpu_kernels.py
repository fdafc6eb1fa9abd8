"""Kernels and the verify pass on a GPU: correctness against the PyTorch references, then timings.

Usage:
  python benchmarks/gpu_kernels.py [--profile]  # on a CUDA machine (about 4 minutes on an H100)
  TRITON_INTERPRET=1 python benchmarks/gpu_kernels.py --smoke   # tiny shapes on the CPU: checks the script

1. Copy bandwidth of the card (device-to-device copy of 1 GiB, read + write bytes).
2. Each kernel against its reference on fresh inputs, then timed (triton.testing.do_bench) over a
   sweep with Llama-3.1-8B attention shapes (32 query heads, 8 KV heads, head dim 128, bf16):
   achieved bandwidth = bytes the kernel must move / time, against the copy bandwidth.
3. Verify passes of the native runner on a randomly initialised Llama-3.1-8B-shaped model (no weights
   can be downloaded there): batch 1, 4, 16, 32 and 64, K = 0..8, against the roofline (weight bytes / copy
   bandwidth) and against transformers' forward on the same weights and inputs. The two must pick the
   same token on at least MIN_AGREEMENT of the rows, counting a row where they differ as agreeing only
   when transformers' logit for our token lies within NEAR_TIE of its own top logit (bfloat16 rounds
   differently in two implementations; see tests/core/test_gpu.py); below that the script exits non-zero.
4. With --profile: where the device time of the batch-1, K=0 pass goes (torch.profiler over a few
   passes, kernels grouped by what they do), the breakdown docs/benchmarks.md quotes.
5. With --fp8: the same 8B-shaped target with quantization="fp8" beside bfloat16 (random weights),
   batch 1 and 32 at K=0 and K=8: milliseconds and the ratio (the goal: at most 0.6x at batch 1).
"""

from __future__ import annotations

import argparse
import inspect
import random
import time
from dataclasses import dataclass
from functools import partial

import torch

from splitspec_kernels.paged_attention import (
    AttentionBatch,
    paged_attention_reference,
    paged_attention_triton,
    write_kv_cache_reference,
    write_kv_cache_triton,
)
from splitspec_kernels.rejection_sampling import RejectionBatch, rejection_sample_reference, rejection_sample_triton

MIN_AGREEMENT = 0.99
NEAR_TIE = 0.25


@dataclass
class Shapes:
    q_heads: int
    kv_heads: int
    head_dim: int
    block_size: int
    vocab: int
    batches: tuple[int, ...]
    drafts: tuple[int, ...]
    contexts: tuple[int, ...]
    max_kv_bytes: int
    runner_batches: tuple[int, ...]
    runner_context: int
    write_tokens: tuple[int, ...]


FULL = Shapes(
    32, 8, 128, 16, 128256, (1, 8, 32, 128, 256), (0, 2, 4, 8), (512, 2048, 8192, 32768), 24 << 30,
    (1, 4, 16, 32, 64), 1024,
    (1, 32, 288, 2304),
)  # fmt: skip
SMOKE = Shapes(4, 2, 32, 16, 512, (1, 3), (0, 2), (40, 100), 1 << 30, (1, 2), 24, (1, 40))


def _timer(device: torch.device):
    if device.type == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=5, rep=40) / 1000  # seconds

    def cpu_time(fn) -> float:
        fn()
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return cpu_time


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = _timer(device)(lambda: dst.copy_(src))
    return 2 * nbytes / seconds


def _paged_inputs(shapes: Shapes, batch: int, q_len: int, context: int, dtype: torch.dtype, device: torch.device):
    bs = shapes.block_size
    blocks_per_seq = -(-(context + q_len) // bs)
    num_blocks = batch * blocks_per_seq
    order = list(range(num_blocks))
    random.Random(batch * 7 + context).shuffle(order)
    tables = [order[b * blocks_per_seq : (b + 1) * blocks_per_seq] for b in range(batch)]
    slots = [t[p // bs] * bs + p % bs for t in tables for p in range(context, context + q_len)]
    layout = AttentionBatch.build(tables, [context + q_len] * batch, [q_len] * batch, slots, device=device)
    cache = (num_blocks, bs, shapes.kv_heads, shapes.head_dim)
    key_cache = torch.randn(cache, dtype=dtype, device=device)
    value_cache = torch.randn(cache, dtype=dtype, device=device)
    query = torch.randn(batch * q_len, shapes.q_heads, shapes.head_dim, dtype=dtype, device=device)
    return layout, key_cache, value_cache, query


def bench_kernels(shapes: Shapes, device: torch.device, bandwidth: float) -> None:
    timer = _timer(device)
    dtype = torch.bfloat16
    element = torch.finfo(dtype).bits // 8
    print("\npaged attention (bf16): batch, K, context -> time, achieved bandwidth, share of copy bandwidth")
    for context in shapes.contexts:
        for batch in shapes.batches:
            kv_bytes = 2 * batch * (context + 1) * shapes.kv_heads * shapes.head_dim * element
            if kv_bytes > shapes.max_kv_bytes:
                continue
            for k in shapes.drafts:
                layout, key_cache, value_cache, query = _paged_inputs(shapes, batch, k + 1, context, dtype, device)
                scale = shapes.head_dim**-0.5
                got = paged_attention_triton(query, key_cache, value_cache, layout, scale)
                if batch * context <= 64 * 2048:  # the reference pads and gathers: keep its memory in bounds
                    want = paged_attention_reference(
                        query.float(), key_cache.float(), value_cache.float(), layout, scale
                    )
                    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)
                attend = partial(paged_attention_triton, query, key_cache, value_cache, layout, scale)
                seconds = timer(attend)
                moved = (
                    2 * batch * (context + k + 1) * shapes.kv_heads * shapes.head_dim * element
                    + 2 * query.numel() * element
                )
                print(
                    f"  {batch:>4} {k:>2} {context:>6}  {seconds * 1e6:9.1f} us  {moved / seconds / 1e9:8.1f} GB/s  {moved / seconds / bandwidth:6.1%}"
                )
                del key_cache, value_cache, attend  # free this size's cache before the next is made
    print("\nKV cache write (bf16): tokens -> time, bandwidth")
    for tokens in shapes.write_tokens:
        key = torch.randn(tokens, shapes.kv_heads, shapes.head_dim, dtype=dtype, device=device)
        value = torch.randn_like(key)
        cache = (tokens // shapes.block_size + 1, shapes.block_size, shapes.kv_heads, shapes.head_dim)
        slots = torch.randperm(cache[0] * shapes.block_size, device=device)[:tokens]
        caches = [torch.zeros(cache, dtype=dtype, device=device) for _ in range(4)]
        write_kv_cache_triton(key, value, caches[0], caches[1], slots)
        write_kv_cache_reference(key, value, caches[2], caches[3], slots)
        assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])
        seconds = timer(lambda: write_kv_cache_triton(key, value, caches[0], caches[1], slots))
        moved = 4 * key.numel() * element
        print(f"  {tokens:>5}  {seconds * 1e6:9.1f} us  {moved / seconds / 1e9:8.1f} GB/s")
    print(f"\nrejection sampling (vocab {shapes.vocab}, float64, sampled rows with one-hot drafts): batch, K -> time")
    for batch in shapes.batches:
        for k in shapes.drafts:
            rows = batch * (k + 1)
            rb = _rejection_inputs(batch, k, rows, shapes.vocab, device)
            got = rejection_sample_triton(rb)
            if rows * shapes.vocab <= 64 * 128256:
                cpu = RejectionBatch(**{f: getattr(rb, f).cpu() for f in rb.__dataclass_fields__})
                want = rejection_sample_reference(cpu)
                assert all(torch.equal(g.cpu(), w) for g, w in zip(got, want))
            seconds = timer(lambda: rejection_sample_triton(rb))
            print(f"  {batch:>4} {k:>2}  {seconds * 1e6:9.1f} us")


def _rejection_inputs(batch: int, k: int, rows: int, vocab: int, device: torch.device) -> RejectionBatch:
    g = torch.Generator(device=device).manual_seed(rows)
    probs = torch.softmax(torch.randn(rows, vocab, generator=g, device=device, dtype=torch.float64) * 3, dim=-1)
    return RejectionBatch(
        target=probs,
        row_start=torch.arange(batch, device=device) * (k + 1),
        num_drafts=torch.full((batch,), k, device=device),
        draft_tokens=probs.view(batch, k + 1, vocab)[:, :k].argmax(-1),
        greedy=torch.zeros(batch, dtype=torch.bool, device=device),
        q_ids=torch.zeros(batch, k, 1, dtype=torch.int64, device=device),
        q_probs=torch.zeros(batch, k, 1, dtype=torch.float64, device=device),
        q_count=torch.zeros(batch, k, dtype=torch.int64, device=device),
        accept_uniform=torch.zeros(batch, k, dtype=torch.float64, device=device),
        target_noise=torch.empty(rows, vocab, dtype=torch.float64, device=device).exponential_(generator=g),
        residual_noise=torch.ones(rows, vocab, dtype=torch.float64, device=device),
    )


def _llama_config(smoke: bool):
    from transformers import LlamaConfig

    if smoke:
        return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=512, max_position_embeddings=256)  # fmt: skip
    return LlamaConfig(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
        tie_word_embeddings=False,
    )  # fmt: skip


def agreement(ours: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(exact, near-tie) fractions of rows where our logits' argmax is transformers' (or within NEAR_TIE
    of its top logit, by transformers' own logits)."""
    reference = reference.float()
    picked = ours.argmax(-1)
    exact = (picked == reference.argmax(-1)).float().mean().item()
    gap = reference.max(-1).values - reference.gather(-1, picked[:, None])[:, 0]
    return exact, (gap <= NEAR_TIE).float().mean().item()


KERNEL_GROUPS = (
    ("GEMM", ("gemm", "gemv", "matmul", "linear", "addmm", "::mm", "cublas", "cutlass", "xmma", "nvjet")),
    ("paged attention", ("paged_attention", "attention", "_merge")),
    ("RMS norm", ("rms_norm",)),
    ("rotary", ("rotary", "rope")),
    ("KV-cache write", ("write_kv", "kv_cache")),
    ("copies", ("memcpy", "copy_", "memset")),
)


def kernel_group(name: str) -> str:
    """What a profiled kernel does, from its name; "other elementwise" when nothing matches."""
    lowered = name.lower()
    return next((group for group, keys in KERNEL_GROUPS if any(k in lowered for k in keys)), "other elementwise")


def profile_pass(run_pass, device: torch.device, passes: int = 5) -> None:
    """Device time per pass by kernel group (self time, so nothing is counted twice)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    run_pass()
    with profile(activities=activities) as prof:
        for _ in range(passes):
            run_pass()
        if device.type == "cuda":
            torch.cuda.synchronize()
    on_device = device.type == "cuda"
    groups: dict[str, tuple[float, int]] = {}
    for event in prof.key_averages():
        us = event.self_device_time_total if on_device else event.self_cpu_time_total
        if us <= 0:
            continue
        total, count = groups.get(kernel_group(event.key), (0.0, 0))
        groups[kernel_group(event.key)] = (total + us, count + event.count)
    print(f"\n  {'device' if on_device else 'CPU'} time of one pass by kernel group ({passes} passes profiled):")
    for group, (us, count) in sorted(groups.items(), key=lambda item: -item[1][0]):
        print(f"    {group:<18} {us / passes / 1000:8.3f} ms   {count / passes:7.0f} calls")
    print(f"    {'total':<18} {sum(us for us, _ in groups.values()) / passes / 1000:8.3f} ms")


def bench_verify_pass(
    shapes: Shapes, device: torch.device, bandwidth: float, smoke: bool, profiled: bool = False
) -> float:
    """Times the passes; returns the lowest near-tie agreement with transformers over the batches."""
    from transformers import DynamicCache, LlamaForCausalLM

    from splitspec.models.llama import LlamaRunner
    from splitspec.models.runner import ForwardInput

    dtype = torch.float32 if smoke else torch.bfloat16
    config = _llama_config(smoke)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in place in its own dtype: no float32 copy of 8B weights
    with torch.device(device):
        hf = LlamaForCausalLM(config).eval()
    torch.set_default_dtype(default_dtype)
    # newer transformers call the cache argument `cache`, older ones `past_key_values`
    cache_arg = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
    last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(hf.forward).parameters else {}
    weights = dict(hf.state_dict())
    weight_bytes = sum(w.numel() * w.element_size() for w in weights.values())
    roofline = weight_bytes / bandwidth
    timer = _timer(device)
    context = shapes.runner_context
    max_batch = max(shapes.runner_batches)
    head_dim = config.hidden_size // config.num_attention_heads
    element = torch.finfo(dtype).bits // 8
    kv_bytes = (
        2 * config.num_hidden_layers * max_batch * (context + 32) * config.num_key_value_heads * head_dim * element
    )
    runner = LlamaRunner(None, config, weights=weights, device=device, dtype=dtype, kv_cache_memory_bytes=kv_bytes,
                         max_num_seqs=max_batch, kernel_backend="triton")  # fmt: skip
    print(f"\nverify pass, {'tiny (smoke)' if smoke else 'Llama-3.1-8B'} shapes, {dtype}, context {context}, kernels={runner.kernels.name}; "
          f"roofline (weights {weight_bytes / 1e9:.1f} GB / copy bandwidth) = {roofline * 1e3:.2f} ms")  # fmt: skip
    print("  batch  K   splitspec ms   x roofline   transformers ms")
    gen = torch.Generator().manual_seed(0)
    lowest = 1.0
    for batch in shapes.runner_batches:
        prompts = torch.randint(0, config.vocab_size, (batch, context), generator=gen)
        ids = [f"s{b}" for b in range(batch)]
        runner.forward([ForwardInput(i, prompts[b].tolist(), 1) for b, i in enumerate(ids)])
        cache = DynamicCache()
        with torch.no_grad():  # the prompt's last logits only: 64 prompts' full logits would take 17 GB
            hf(prompts.to(device), use_cache=True, **{cache_arg: cache}, **last_logits_only)
        for k in (0, 4) if smoke else range(0, 9):  # the smoke run checks the script, not the sweep
            new = torch.randint(0, config.vocab_size, (batch, k + 1), generator=gen)

            def ours() -> None:
                runner.forward([ForwardInput(i, new[b].tolist(), k + 1) for b, i in enumerate(ids)])
                for i in ids:
                    runner.truncate(i, context)

            def theirs() -> None:
                with torch.no_grad():
                    hf(new.to(device), use_cache=True, **{cache_arg: cache})
                cache.crop(context - cache.get_seq_length())  # negative: drop that many (every version)

            ours_s, theirs_s = timer(ours), timer(theirs)
            line = f"  {batch:>5} {k:>2}   {ours_s * 1e3:12.2f}   {ours_s / roofline:10.2f}   {theirs_s * 1e3:15.2f}"
            if k == 4:  # the two implementations on the same inputs: how often they pick the same token
                logits = runner.forward([ForwardInput(i, new[b].tolist(), k + 1) for b, i in enumerate(ids)])
                for i in ids:
                    runner.truncate(i, context)
                with torch.no_grad():
                    reference = hf(new.to(device), use_cache=True, **{cache_arg: cache}).logits.float().cpu()
                cache.crop(context - cache.get_seq_length())
                exact, near = agreement(logits.float().cpu(), reference.reshape(-1, reference.shape[-1]))
                lowest = min(lowest, near)
                line += f"   (argmax agrees with transformers on {exact:.1%} of rows, {near:.1%} with near-ties)"
            print(line)
            if profiled and batch == shapes.runner_batches[0] and k == 0:
                profile_pass(ours, device)
        for i in ids:
            runner.free(i)
    return lowest


def bench_fp8_pass(shapes: Shapes, device: torch.device, smoke: bool) -> None:
    """quantization="fp8" against the runner's own dtype, on one set of random weights."""
    from splitspec.models.llama import LlamaRunner

    dtype = torch.float32 if smoke else torch.bfloat16
    config = _llama_config(smoke)
    gen = torch.Generator(device=device).manual_seed(0)
    weights = {}
    for name, shape in _llama_shapes(config).items():
        weights[name] = torch.randn(shape, generator=gen, device=device, dtype=dtype) * (
            1.0 if "norm" in name else 0.02
        )
    context, batches, timer = shapes.runner_context, (1, max(shapes.runner_batches)), _timer(device)
    times = {}
    for quantization in (None, "fp8"):
        runner = LlamaRunner(None, config, weights=dict(weights), device=device, dtype=dtype, max_num_seqs=max(batches),
                             kv_cache_memory_bytes=_kv_bytes(config, max(batches), context, dtype), kernel_backend="triton",
                             quantization=quantization)  # fmt: skip
        times |= {(quantization, *key): s for key, s in _pass_times(runner, batches, context, timer).items()}
        del runner
    print(f"\nfp8 against {dtype}, {'tiny (smoke)' if smoke else 'Llama-3.1-8B'} shapes, context {context}")
    print(f"  batch  K   {str(dtype).removeprefix('torch.'):>9} ms   fp8 ms   fp8 / base")
    for batch in batches:
        for k in (0, 8):
            base, fp8 = times[None, batch, k], times["fp8", batch, k]
            print(f"  {batch:>5} {k:>2}   {base * 1e3:12.2f}   {fp8 * 1e3:6.2f}   {fp8 / base:10.2f}")


def _pass_times(runner, batches: tuple[int, ...], context: int, timer) -> dict[tuple[int, int], float]:
    """(batch, K) -> seconds of a verify pass of K + 1 tokens per sequence after `context` tokens."""
    from splitspec.models.runner import ForwardInput

    times = {}
    for batch in batches:
        ids = [f"s{b}" for b in range(batch)]
        runner.forward([ForwardInput(i, [1] * context, 1) for i in ids])
        for k in (0, 8):

            def one_pass(k: int = k) -> None:
                runner.forward([ForwardInput(i, [2] * (k + 1), k + 1) for i in ids])
                for i in ids:
                    runner.truncate(i, context)

            times[batch, k] = timer(one_pass)
        for i in ids:
            runner.free(i)
    return times


def _llama_shapes(config) -> dict[str, tuple[int, ...]]:
    hidden, inter, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    head_dim = hidden // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    shapes = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
            p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
        }  # fmt: skip
    return shapes


def _kv_bytes(config, batch: int, context: int, dtype: torch.dtype) -> int:
    head_dim = config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * torch.finfo(dtype).bits // 8
    return per_token * batch * (context + 32)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (TRITON_INTERPRET=1)")
    parser.add_argument("--skip-runner", action="store_true", help="kernels only")
    parser.add_argument("--skip-kernels", action="store_true", help="the verify pass only")
    parser.add_argument("--profile", action="store_true", help="break the batch-1, K=0 pass down by kernel group")
    parser.add_argument("--fp8", action="store_true", help="also the verify pass with quantization='fp8'")
    args = parser.parse_args()
    device = torch.device("cpu" if args.smoke else "cuda")
    shapes = SMOKE if args.smoke else FULL
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    bandwidth = copy_bandwidth(device, (16 << 20) if args.smoke else (1 << 30))
    print(f"copy bandwidth: {bandwidth / 1e9:.0f} GB/s (read + write)")
    if not args.skip_kernels:
        bench_kernels(shapes, device, bandwidth)
    if not args.skip_runner:
        lowest = bench_verify_pass(shapes, device, bandwidth, args.smoke, args.profile)
        if lowest < MIN_AGREEMENT:
            raise SystemExit(
                f"gpu_kernels: the verify pass agrees with transformers on {lowest:.1%} of rows (near-ties within "
                f"{NEAR_TIE} counted), below {MIN_AGREEMENT:.0%}: the runner computes something else"
            )
        print(
            f"agreement with transformers: at least {lowest:.1%} of rows (near-ties counted; needs {MIN_AGREEMENT:.0%})"
        )
    if args.fp8:
        bench_fp8_pass(shapes, device, args.smoke)


if __name__ == "__main__":
    main()
