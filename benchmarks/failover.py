"""What failover costs under a steady load: pods killed and drained while streams run.

Usage: python benchmarks/failover.py [--model default] [--streams 4] [--max-tokens 96] [--settle-s 5]
           [--output failover.json]

Starts two verifiers, two proposers (ngram) and a gateway as separate processes on loopback, and keeps
`--streams` greedy streams running (each starts its next prompt as soon as one ends). Then, one at a
time, with `--settle-s` of steady load before each: SIGKILL a verifier, SIGTERM (drain) a verifier,
SIGKILL a proposer, SIGTERM a proposer; each pod is started again and serves before the next event.

Per event it reports, over the streams in flight at that moment, the time until each produced its next
token (p50, p99, max), beside the steady time between tokens; and tokens lost: tokens missing from a
finished stream, or differing from the in-process output of the same prompt. Lost must be 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from pods import Pod

from splitspec import LLM, SamplingParams
from splitspec.entrypoints.bench.timing import percentile
from splitspec.entrypoints.bench.workloads import build_prompts
from splitspec.entrypoints.client import build_request
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc


def _log(message: str) -> None:
    print(f"failover: {message}", file=sys.stderr, flush=True)


@dataclass
class StreamRecord:
    prompt: int
    started: float
    arrivals: list[float] = field(default_factory=list)  # one time per message with tokens
    token_ids: list[int] = field(default_factory=list)
    ended: float | None = None
    error: str | None = None


class SteadyLoad:
    """`streams` client threads, each running one greedy stream after another until stopped."""

    def __init__(self, address: str, prompts: list[list[int]], streams: int, max_tokens: int) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.GatewayStub(self.channel)
        self.prompts = prompts
        self.max_tokens = max_tokens
        self.records: list[StreamRecord] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(streams)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _run(self, offset: int) -> None:
        n = offset
        while not self.stopping.is_set():
            record = StreamRecord(n % len(self.prompts), time.monotonic())
            self.records.append(record)
            request = build_request(
                self.prompts[record.prompt], temperature=0, max_tokens=self.max_tokens, ignore_eos=True
            )
            try:
                for response in self.stub.Generate(request, timeout=600):
                    if response.token_ids:
                        record.arrivals.append(time.monotonic())
                        record.token_ids.extend(response.token_ids)
            except grpc.RpcError as exc:
                record.error = f"{exc.code().name}: {exc.details()}"
            record.ended = time.monotonic()
            n += len(self.threads)

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(600)
        self.channel.close()

    def time_to_next_token(self, at: float) -> list[float]:
        """For each stream in flight at `at`: seconds from `at` to its next token."""
        gaps = []
        for r in list(self.records):
            if r.started < at and (r.ended is None or r.ended > at):
                after = [t for t in r.arrivals if t > at]
                if after:
                    gaps.append(after[0] - at)
        return gaps

    def steady_gap(self, windows: list[tuple[float, float]]) -> float:
        """Median time between a stream's tokens, away from the events."""
        gaps = [
            b - a
            for r in list(self.records)
            for a, b in zip(r.arrivals, r.arrivals[1:])
            if not any(lo <= b and a <= hi for lo, hi in windows)
        ]
        return statistics.median(gaps) if gaps else float("nan")


def _tokens_lost(records: list[StreamRecord], expected: list[list[int]]) -> tuple[int, int, int]:
    """(tokens lost, streams that failed, streams checked) over the streams that ran to their end."""
    lost = failed = checked = 0
    for r in records:
        if r.ended is None:
            continue
        checked += 1
        want = expected[r.prompt]
        if r.error is not None:
            failed += 1
        same = next((i for i, (a, b) in enumerate(zip(r.token_ids, want)) if a != b), min(len(r.token_ids), len(want)))
        lost += len(want) - same
    return lost, failed, checked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--settle-s", type=float, default=5.0, help="steady load before each event")
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--output", help="write the report as JSON here")
    args = parser.parse_args()

    llm = LLM(args.model)
    tokenizer = llm.get_tokenizer()
    texts = [p.text for p in build_prompts(["chat", "code_edit"], 4, seed=0)]
    if getattr(tokenizer, "chat_template", None):
        texts = [llm.apply_chat_template([{"role": "user", "content": t}]) for t in texts]
    prompts = [tokenizer.encode(t) for t in texts]
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    _log(f"in-process reference for {len(prompts)} prompts")
    expected = [o.outputs[0].token_ids for o in llm.generate([{"prompt_token_ids": p} for p in prompts], params,
                                                           use_tqdm=False)]  # fmt: skip
    llm.close()

    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"splitspec-failover-{os.getpid()}"
    log_dir.mkdir(parents=True, exist_ok=True)
    verifiers = [Pod(f"verifier{i}", ["serve-verifier", "--model", args.model], log_dir) for i in range(2)]
    proposers = [Pod(f"proposer{i}", ["serve-proposer", "-k", str(args.k)], log_dir) for i in range(2)]
    gateway = Pod(
        "gateway",
        ["serve-gateway", "--model", args.model, "-k", str(args.k), "--verifiers",
         ",".join(v.address for v in verifiers), "--proposers", ",".join(p.address for p in proposers)],
        log_dir,
    )  # fmt: skip
    pods = [*verifiers, *proposers, gateway]
    events = [
        ("verifier SIGKILL", verifiers[0], signal.SIGKILL),
        ("verifier SIGTERM (drain)", verifiers[1], signal.SIGTERM),
        ("proposer SIGKILL", proposers[0], signal.SIGKILL),
        ("proposer SIGTERM (drain)", proposers[1], signal.SIGTERM),
    ]
    rows = []
    try:
        _log(f"starting 2 verifiers, 2 proposers and a gateway (logs in {log_dir})")
        for pod in pods:
            pod.start()
        for pod in pods:
            pod.wait_serving()
        load = SteadyLoad(gateway.address, prompts, args.streams, args.max_tokens)
        load.start()
        for name, pod, sig in events:
            time.sleep(args.settle_s)
            at = time.monotonic()
            _log(name)
            pod.stop(sig)
            exited = time.monotonic() - at
            time.sleep(args.settle_s)
            rows.append({"event": name, "at": at, "exit_s": exited, "gaps": load.time_to_next_token(at)})
            pod.start()
            pod.wait_serving()
        time.sleep(args.settle_s)
        load.stop()
    finally:
        for pod in pods:
            pod.stop(signal.SIGKILL)

    steady = load.steady_gap([(r["at"], r["at"] + args.settle_s) for r in rows])
    lost, failed, checked = _tokens_lost(load.records, expected)
    report = {
        "model": args.model,
        "streams": args.streams,
        "max_tokens": args.max_tokens,
        "steady_time_between_tokens_s": steady,
        "streams_checked": checked,
        "streams_failed": failed,
        "tokens_lost": lost,
        "events": [
            {
                "event": r["event"],
                "pod_exited_after_s": r["exit_s"],
                "streams_in_flight": len(r["gaps"]),
                "next_token_p50_s": percentile(r["gaps"], 50) if r["gaps"] else None,
                "next_token_p99_s": percentile(r["gaps"], 99) if r["gaps"] else None,
                "next_token_max_s": max(r["gaps"], default=None),
            }
            for r in rows
        ],
    }
    print(f"steady time between tokens: {steady * 1000:.0f} ms (median, {args.streams} streams)")
    print("| event | pod exited after | streams in flight | next token p50 | p99 | max |")
    print("| --- | --- | --- | --- | --- | --- |")
    for e in report["events"]:
        cells = [
            f"{e[k] * 1000:.0f} ms" if e[k] is not None else "-"
            for k in ("next_token_p50_s", "next_token_p99_s", "next_token_max_s")
        ]
        print(
            f"| {e['event']} | {e['pod_exited_after_s']:.2f} s | {e['streams_in_flight']} | " + " | ".join(cells) + " |"
        )
    print(f"streams checked: {checked}, failed: {failed}, tokens lost or changed: {lost}")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    if lost or failed:
        raise SystemExit("failover lost tokens")


if __name__ == "__main__":
    main()
