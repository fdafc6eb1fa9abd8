"""Where the stack's time per round goes on loopback (issue 16).

The same greedy requests run in-process and through a verifier and a gateway in their own processes,
interleaved, with n-grams drafted by the verifier itself (the gateway's default for `--method ngram`).
Besides tokens per second, it reports what the stack adds per round in wall time, and the CPU time
each process, and each of its busiest threads, spends per round: on a machine whose cores the model's
own threads already fill, the services' CPU time is taken from the passes.

    python benchmarks/round_overhead.py [--model default] [--prompts 3] [--max-tokens 128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pods import Pod  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds (user and system) of each of the process's threads, keyed "name/tid"."""
    times = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        times[f"{name}/{task.name}"] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--workload", default="code_edit")
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()

    from splitspec import LLM
    from splitspec.checkpoint import resolve_checkpoint
    from splitspec.entrypoints.bench.run import BenchSettings, _bench_prompts
    from splitspec.entrypoints.bench.runners import SplitspecGateway, SplitspecInProcess

    path = str(resolve_checkpoint(args.model))
    spec = {"method": "ngram", "num_speculative_tokens": args.k}
    in_process = SplitspecInProcess("in-process", LLM(path, speculative_config=spec))
    settings = BenchSettings(workloads=(args.workload,), prompts_per_workload=args.prompts)
    prompts = _bench_prompts(in_process.llm, settings)

    log_dir = Path(tempfile.mkdtemp(prefix="round-overhead-"))
    verifier = Pod("verifier", ["serve-verifier", "--model", path], log_dir)
    gateway = None
    try:
        verifier.start()
        verifier.wait_serving()
        gateway_args = ["serve-gateway", "--model", path, "--verifiers", verifier.address, "--proposers", ""]
        gateway = Pod("gateway", [*gateway_args, "-k", str(args.k)], log_dir)
        gateway.start()
        gateway.wait_serving()
        stack = SplitspecGateway("gateway", gateway.address)
        for runner in (in_process, stack):  # warm-up
            runner.run(prompts[:1], 16)

        wall = Counter()
        rounds = Counter()
        tokens = Counter()
        cpu: dict[str, Counter] = {"verifier": Counter(), "gateway": Counter()}
        for repeat in range(args.repeats):
            for i, prompt in enumerate(prompts):
                print(f"round_overhead: repeat {repeat + 1}, prompt {i + 1}/{len(prompts)}", file=sys.stderr)
                (timing,) = in_process.run([prompt], args.max_tokens)
                reference = timing.token_ids
                wall["in-process"] += timing.elapsed
                rounds["in-process"] += timing.rounds
                tokens["in-process"] += timing.num_tokens
                before = {pod.name: thread_cpu_s(pod.proc.pid) for pod in (verifier, gateway)}
                (timing,) = stack.run([prompt], args.max_tokens)
                for pod in (verifier, gateway):
                    after = thread_cpu_s(pod.proc.pid)
                    for thread, seconds in after.items():
                        cpu[pod.name][thread] += seconds - before[pod.name].get(thread, 0.0)
                if timing.token_ids != reference:
                    raise SystemExit(f"the stack's output differs from in-process output on {prompt.prompt.name}")
                wall["stack"] += timing.elapsed
                rounds["stack"] += timing.rounds
                tokens["stack"] += timing.num_tokens
    finally:
        for pod in (gateway, verifier):
            if pod is not None:
                pod.stop()

    print(f"{'':<12}{'tok/s':>8}{'rounds':>8}{'ms/round':>10}{'tokens/round':>14}")
    for name in ("in-process", "stack"):
        ms = 1000 * wall[name] / rounds[name]
        print(
            f"{name:<12}{tokens[name] / wall[name]:>8.1f}{rounds[name]:>8}{ms:>10.2f}{tokens[name] / rounds[name]:>14.2f}"
        )
    # the two may split the same tokens into different rounds (pipelined steps choose K before the last
    # outcome is known), so what the stack adds is counted per token, then per stack round
    per_token = wall["stack"] / tokens["stack"] - wall["in-process"] / tokens["in-process"]
    added = 1000 * per_token * tokens["stack"] / rounds["stack"]
    ratio = (tokens["stack"] / wall["stack"]) / (tokens["in-process"] / wall["in-process"])
    print(f"the stack: {ratio:.2f}x in-process tokens per second, {added:+.2f} ms per round")
    print("CPU ms per round of the stack, by process and its busiest threads:")
    for name, threads in cpu.items():
        total = sum(threads.values())
        print(f"  {name:<10}{1000 * total / rounds['stack']:>8.2f}")
        for thread, seconds in threads.most_common(6):
            if seconds > 0:
                print(f"    {thread:<24}{1000 * seconds / rounds['stack']:>8.2f}")
    print(f"logs: {log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
