"""Where a verify pass's time goes (torch profiler): the evidence for or against CUDA graphs.

A warm verify pass of the target, sampling included (the Verifier's device path on a GPU): batch B,
each sequence one committed token plus K drafts over a prompt. Per batch size it prints the wall
time per pass, the kernels launched per pass and, on CUDA, how much of the wall time the device is
busy; then the ops that take the most time. Where the device is busy for a small part of the wall
time, launches dominate and replaying a captured CUDA graph would pay.

Usage: python benchmarks/profile_verify.py [--model default] [--device auto] [--batches 1,16] [-k 8]
                                          [--passes 20] [--temperature 0] [--trace DIR] [--enforce-eager]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from splitspec import LLM, SamplingParams
from splitspec.devices import synchronize
from splitspec.drafts import Draft
from splitspec.sequence import Sequence
from verifier_svc.verifier import Verifier

LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cudaGraphLaunch")


def _device_time(event) -> float:
    """Self device time of a profiler event in microseconds, across torch versions' names."""
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(event, name):
            return float(getattr(event, name))
    return 0.0


def profile_batch(llm: LLM, batch: int, k: int, passes: int, temperature: float, trace: Path | None) -> None:
    runner, verifier = llm.runner, Verifier(llm.runner)
    rng = random.Random(batch)
    params = SamplingParams(temperature=temperature, max_tokens=None)
    sequences = [
        Sequence(f"profile-{b}", None, [rng.randrange(runner.vocab_size) for _ in range(128)], params, seed=b)
        for b in range(batch)
    ]
    verifier.verify([(seq, Draft()) for seq in sequences])  # prefill

    def one_pass() -> None:
        for seq in sequences:  # keep the shape: one committed token and K drafts each time
            runner.truncate(seq.seq_id, len(seq.tokens) - 1)
        drafts = [Draft([rng.randrange(runner.vocab_size) for _ in range(k)], [None] * k) for _ in sequences]
        verifier.verify(list(zip(sequences, drafts)))

    for _ in range(3):
        one_pass()
    synchronize(runner.device)
    start = time.perf_counter()
    for _ in range(passes):
        one_pass()
    synchronize(runner.device)
    wall_ms = (time.perf_counter() - start) / passes * 1e3

    cuda = runner.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(passes):
            one_pass()
        synchronize(runner.device)
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key in LAUNCHES) / passes
    line = f"batch {batch:>3}, K={k}: {wall_ms:7.2f} ms per pass, {launches:5.0f} kernel launches per pass"
    if cuda:
        busy_ms = sum(_device_time(e) for e in events) / passes / 1e3
        line += f", device busy {busy_ms:6.2f} ms ({busy_ms / wall_ms:.0%} of the wall time)"
    print(line)
    print(events.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=12))
    if trace is not None:
        trace.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace / f"verify-batch{batch}-k{k}.json"))
    for seq in sequences:
        runner.free(seq.seq_id)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    parser.add_argument("-k", type=int, default=8, help="drafts per sequence")
    parser.add_argument("--passes", type=int, default=20)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--trace", type=Path, help="write a Chrome trace per batch size into this directory")
    parser.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs: every kernel launched alone")
    args = parser.parse_args()
    llm = LLM(args.model, device=args.device, enforce_eager=args.enforce_eager)
    runner = llm.runner
    where = torch.cuda.get_device_name(runner.device) if runner.device.type == "cuda" else "CPU"
    graphs = "CUDA graphs" if runner.graphs is not None else "eager"
    print(
        f"{args.model} on {where}, {str(runner.dtype).removeprefix('torch.')}, kernels={runner.kernels.name}, {graphs}"
    )
    for batch in (int(b) for b in args.batches.split(",")):
        profile_batch(llm, batch, args.k, args.passes, args.temperature, args.trace)


if __name__ == "__main__":
    main()
