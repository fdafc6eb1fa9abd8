"""Soak the three-process stack: many requests at once, some cancelled, some timed out, some malformed.

Usage: python benchmarks/soak.py [--model default] [--requests 1000] [--concurrency 32]
           [--cancelled 0.2] [--expiring 0.1] [--malformed 0.1] [--max-tokens 64] [--seed 0]
           [--output soak.json]

Starts a verifier, an n-gram proposer and a gateway as separate processes on loopback. The gateway
sends every round's drafting to the proposer (`--ngram-on-proposers`), so all three see each request
begin, run and end. `--concurrency` client threads then send `--requests` greedy requests, each of one kind:

- valid: runs to its end; its tokens must be the in-process output of the same prompt;
- cancelled: the client cancels it after a random number of messages (none to a few);
- expiring: the client's deadline (20-500 ms) passes mid-generation: DEADLINE_EXCEEDED, or a complete
  answer checked as a valid one when it was quicker;
- malformed: one of a fixed list of bad requests; each must get INVALID_ARGUMENT with a message.

At the end every KV block on the verifier is free and it holds no sequence, no request took longer
than `--stuck-after-s`, and each service's resident memory is within `--max-memory-growth` (10%) of its
level after the warm-up (the first tenth of the requests, at least twice `--concurrency`, at most half). Prints progress, a table of outcomes and a
line per check; exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from pods import Pod, start_ngram_stack

from splitspec import LLM, SamplingParams
from splitspec.entrypoints.client import build_request
from splitspec_protos import splitspec_v1_pb2 as pb
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc

KINDS = ("valid", "cancelled", "expiring", "malformed")


def _log(message: str) -> None:
    print(f"soak: {message}", file=sys.stderr, flush=True)


@dataclass
class Outcome:
    index: int
    kind: str
    prompt: int
    code: str  # the gRPC status name, or OK
    seconds: float
    token_ids: list[int]
    message: str = ""
    problem: str = ""  # why this outcome fails the soak; empty when it is as expected


def malformed_requests(
    vocab_size: int, max_model_len: int, max_tokens_limit: int
) -> list[tuple[str, pb.GenerateRequest]]:
    """Requests the gateway must refuse with INVALID_ARGUMENT, named by what is wrong with them."""

    def request(prompt: list[int] | None = None, **sampling) -> pb.GenerateRequest:
        r = pb.GenerateRequest(prompt_token_ids=prompt if prompt is not None else [1, 2, 3])
        for name, value in sampling.items():
            if name == "stop":
                r.sampling.stop.extend(value)
            else:
                setattr(r.sampling, name, value)
        return r

    speculation_unknown = request()
    speculation_unknown.speculation.update({"draft_everything": 1})
    k_too_large = request()
    k_too_large.speculation.update({"num_speculative_tokens": 1000})
    both_prompts = request()
    both_prompts.prompt = "and text as well"
    return [
        ("no prompt", pb.GenerateRequest()),
        ("a token id outside the vocabulary", request([1, vocab_size])),
        ("a negative token id", request([1, -1])),
        ("a prompt longer than the context", request([1] * (max_model_len + 1))),
        ("max_tokens over the server's limit", request(max_tokens=max_tokens_limit + 1)),
        ("a negative temperature", request(temperature=-1.0)),
        ("a NaN temperature", request(temperature=math.nan)),
        ("top_p above 1", request(top_p=1.5)),
        ("too many stop strings", request(stop=["x"] * 17)),
        ("an unknown speculation override", speculation_unknown),
        ("K out of range", k_too_large),
        ("text and token ids together", both_prompts),
    ]


def plan(requests: int, fractions: dict[str, float], rng: random.Random) -> list[str]:
    """Each request's kind: the fractions' exact shares, in random order."""
    kinds = []
    for kind in ("cancelled", "expiring", "malformed"):
        kinds += [kind] * round(requests * fractions[kind])
    kinds += ["valid"] * (requests - len(kinds))
    rng.shuffle(kinds)
    return kinds


class Soak:
    def __init__(
        self,
        address: str,
        prompts: list[list[int]],
        expected: list[list[int]],
        malformed: list[tuple[str, pb.GenerateRequest]],
        max_tokens: int,
        stuck_after_s: float,
        seed: int,
    ) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.GatewayStub(self.channel)
        self.prompts = prompts
        self.expected = expected
        self.malformed = malformed
        self.max_tokens = max_tokens
        self.stuck_after_s = stuck_after_s
        self.seed = seed
        self.done = 0
        self.lock = threading.Lock()

    def run(self, kinds: list[str], concurrency: int, first_index: int = 0) -> list[Outcome]:
        total = len(kinds)
        step = max(1, total // 10)

        def one(i: int) -> Outcome:
            outcome = self.request(first_index + i, kinds[i])
            with self.lock:
                self.done += 1
                if self.done % step == 0 or self.done == total:
                    _log(f"{self.done}/{total} requests done")
            return outcome

        self.done = 0
        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(one, range(total)))

    def request(self, index: int, kind: str) -> Outcome:
        rng = random.Random(f"{self.seed}-{index}")
        prompt = rng.randrange(len(self.prompts))
        if kind == "malformed":
            name, request = self.malformed[index % len(self.malformed)]
            outcome = self._call(index, kind, prompt, request, self.stuck_after_s, cancel_after=None)
            if outcome.code != "INVALID_ARGUMENT" or not outcome.message:
                outcome.problem = f"{name}: expected INVALID_ARGUMENT with a message, got {outcome.code}"
            return outcome
        request = build_request(self.prompts[prompt], temperature=0, max_tokens=rng.randint(4, self.max_tokens))
        if kind == "cancelled":
            outcome = self._call(index, kind, prompt, request, self.stuck_after_s, cancel_after=rng.randint(0, 3))
            if outcome.code not in ("CANCELLED", "OK"):
                outcome.problem = f"cancelled: the stream ended with {outcome.code} {outcome.message!r}"
            return outcome
        timeout = rng.uniform(0.02, 0.5) if kind == "expiring" else self.stuck_after_s
        outcome = self._call(index, kind, prompt, request, timeout, cancel_after=None)
        if kind == "expiring" and outcome.code == "DEADLINE_EXCEEDED":
            return outcome
        if outcome.code != "OK":
            outcome.problem = f"{kind}: {outcome.code} {outcome.message!r}"
        else:
            want = self.expected[prompt][: request.sampling.max_tokens]
            if outcome.token_ids != want:
                first = next((i for i, (a, b) in enumerate(zip(outcome.token_ids, want)) if a != b), None)
                outcome.problem = (
                    f"{kind}: {len(outcome.token_ids)} tokens, expected {len(want)}; first difference at {first}"
                )
        return outcome

    def _call(
        self, index: int, kind: str, prompt: int, request: pb.GenerateRequest, timeout: float, cancel_after: int | None
    ) -> Outcome:
        started = time.monotonic()
        tokens: list[int] = []
        stream = self.stub.Generate(request, timeout=timeout)
        code, message = "OK", ""
        try:
            if cancel_after == 0:
                stream.cancel()
            for messages, response in enumerate(stream, start=1):
                tokens += response.token_ids
                if cancel_after is not None and messages >= cancel_after:
                    stream.cancel()
        except grpc.RpcError as exc:
            code, message = exc.code().name, exc.details() or ""
        seconds = time.monotonic() - started
        outcome = Outcome(index, kind, prompt, code, seconds, tokens, message)
        if code == "DEADLINE_EXCEEDED" and timeout >= self.stuck_after_s:
            outcome.problem = f"stuck: no end within {self.stuck_after_s:.0f} s"
        return outcome

    def close(self) -> None:
        self.channel.close()


def _prompts(tokenizer, count: int, seed: int) -> list[list[int]]:
    """Token ids of real prompts where the model has a tokenizer (the bench's input-grounded workloads and
    chats, through the chat template); otherwise token ids with repeated runs that n-grams find."""
    rng = random.Random(seed)
    if tokenizer is None:
        prompts = []
        for _ in range(count):
            phrase = [rng.randrange(3, 200) for _ in range(rng.randint(2, 6))]
            prompts.append([rng.randrange(3, 200) for _ in range(rng.randint(1, 8))] + phrase * rng.randint(2, 5))
        return prompts
    from splitspec.entrypoints.bench.workloads import build_prompts
    from splitspec.tokenizer import chat_prompt

    per_workload = max(1, math.ceil(count / 3))
    chosen = build_prompts(["code_edit", "summarise", "chat"], per_workload, seed)[:count]
    return [tokenizer.encode(chat_prompt(tokenizer, [{"role": "user", "content": p.text}])) for p in chosen]


def _in_process(llm: LLM, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    greedy = SamplingParams(temperature=0, max_tokens=max_tokens)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], greedy, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def _kv_settles(verifier: Pod, within_s: float = 30.0) -> pb.VerifierInfo:
    """The verifier's info once it holds nothing, or its last info after `within_s`."""
    deadline = time.monotonic() + within_s
    with grpc.insecure_channel(verifier.address) as channel:
        stub = pb_grpc.VerifierStub(channel)
        while True:
            info = stub.GetInfo(pb.InfoRequest(), timeout=10)
            settled = info.num_sequences == 0 and info.num_free_blocks == info.num_total_blocks
            if settled or time.monotonic() > deadline:
                return info
            time.sleep(0.2)


def soak(args: argparse.Namespace, log_dir: Path) -> dict:
    rng = random.Random(args.seed)
    fractions = {"cancelled": args.cancelled, "expiring": args.expiring, "malformed": args.malformed}
    kinds = plan(args.requests, fractions, rng)
    _log(f"computing in-process greedy output for {args.prompts} prompts")
    llm = LLM(args.model)
    prompts = _prompts(llm.tokenizer, args.prompts, args.seed)
    expected = _in_process(llm, prompts, args.max_tokens)
    del llm

    pods: list[Pod] = []
    try:
        gateway_args = ["--ngram-on-proposers", "--max-tokens-limit", str(args.max_tokens)]
        verifier, _, gateway = start_ngram_stack(args.model, log_dir, pods, [], gateway_args)
        with grpc.insecure_channel(verifier.address) as channel:
            info = pb_grpc.VerifierStub(channel).GetInfo(pb.InfoRequest(), timeout=10)
        malformed = malformed_requests(info.vocab_size, info.max_model_len, args.max_tokens)
        client = Soak(gateway.address, prompts, expected, malformed, args.max_tokens, args.stuck_after_s, args.seed)
        warm_count = min(max(len(kinds) // 10, 2 * args.concurrency), len(kinds) // 2)
        _log(f"warm-up: {warm_count} requests, {args.concurrency} at once")
        started = time.monotonic()
        outcomes = client.run(kinds[:warm_count], args.concurrency)
        _kv_settles(verifier)
        rss_warm = {pod.name: pod.rss_bytes() for pod in pods}
        _log(f"measured run: {len(kinds) - warm_count} requests, {args.concurrency} at once")
        outcomes += client.run(kinds[warm_count:], args.concurrency, first_index=warm_count)
        elapsed = time.monotonic() - started
        client.close()
        info = _kv_settles(verifier)
        rss_end = {pod.name: pod.rss_bytes() for pod in pods}
        exited = [f"{pod.name} exited with {pod.proc.returncode}" for pod in pods if pod.proc.poll() is not None]
    finally:
        for pod in reversed(pods):
            pod.stop()

    growth = {name: rss_end[name] / rss_warm[name] - 1 for name in rss_warm}
    problems = [o for o in outcomes if o.problem]
    checks = {
        "every request answered as its kind requires": not problems,
        "every KV block free and no sequence held": info.num_sequences == 0
        and info.num_free_blocks == info.num_total_blocks,
        f"resident memory within {args.max_memory_growth:.0%} of the warm level": all(
            g <= args.max_memory_growth for g in growth.values()
        ),
        "every service still running": not exited,
    }
    return {
        "requests": len(outcomes),
        "concurrency": args.concurrency,
        "seconds": elapsed,
        "tokens": sum(len(o.token_ids) for o in outcomes),
        "outcomes": {kind: dict(Counter(o.code for o in outcomes if o.kind == kind)) for kind in KINDS},
        "valid_outputs_checked": sum(1 for o in outcomes if o.code == "OK" and o.kind in ("valid", "expiring")),
        "longest_request_s": max(o.seconds for o in outcomes),
        "kv_blocks_held": info.num_total_blocks - info.num_free_blocks,
        "sequences_held": info.num_sequences,
        "rss_warm_mib": {k: v / 2**20 for k, v in rss_warm.items()},
        "rss_growth": growth,
        "exited": exited,
        "problems": [asdict(o) for o in problems[:20]],
        "checks": checks,
    }


def _print(report: dict) -> None:
    print(
        f"soak: {report['requests']} requests, {report['concurrency']} at once, {report['seconds']:.0f} s, "
        f"{report['tokens']} tokens streamed; longest request {report['longest_request_s']:.1f} s"
    )
    print(f"{'kind':<12} {'requests':>8}  outcomes")
    for kind, codes in report["outcomes"].items():
        line = ", ".join(f"{code} {n}" for code, n in sorted(codes.items(), key=lambda kv: -kv[1]))
        print(f"{kind:<12} {sum(codes.values()):>8}  {line}")
    print(f"greedy outputs compared with in-process output: {report['valid_outputs_checked']}")
    print(f"KV blocks held at the end: {report['kv_blocks_held']}, sequences held: {report['sequences_held']}")
    memory = ", ".join(
        f"{name} {report['rss_warm_mib'][name]:.0f} MiB {growth:+.1%}" for name, growth in report["rss_growth"].items()
    )
    print(f"resident memory after warm-up, and its change by the end: {memory}")
    for check, ok in report["checks"].items():
        print(f"{'PASS' if ok else 'FAIL'} {check}")
    for problem in report["problems"]:
        print(f"  request {problem['index']} ({problem['kind']}, prompt {problem['prompt']}): {problem['problem']}")
    for line in report["exited"]:
        print(f"  {line}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="the verifier's and gateway's checkpoint")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--cancelled", type=float, default=0.2, help="the share of requests cancelled mid-way")
    parser.add_argument("--expiring", type=float, default=0.1, help="the share given deadlines that expire")
    parser.add_argument("--malformed", type=float, default=0.1, help="the share of malformed requests")
    parser.add_argument("--max-tokens", type=int, default=64, help="each request asks for 4 to this many tokens")
    parser.add_argument("--prompts", type=int, default=24, help="how many distinct prompts the requests use")
    parser.add_argument("--stuck-after-s", type=float, default=300.0, help="a request still running then is stuck")
    parser.add_argument("--max-memory-growth", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="also write the report as JSON here")
    parser.add_argument("--log-dir", default=None, help="where the servers' logs go (default: a temporary one)")
    args = parser.parse_args()
    if args.requests < 1 or args.concurrency < 1 or args.max_tokens < 4 or args.prompts < 1:
        parser.error("--requests, --concurrency and --prompts must be at least 1, --max-tokens at least 4")
    if (
        sum((args.cancelled, args.expiring, args.malformed)) > 1
        or min(args.cancelled, args.expiring, args.malformed) < 0
    ):
        parser.error("--cancelled, --expiring and --malformed are shares in [0, 1] that sum to at most 1")
    if args.model == "default":
        from splitspec.default_model import ensure_default_model

        ensure_default_model()
    with tempfile.TemporaryDirectory() as scratch:
        log_dir = Path(args.log_dir or scratch)
        log_dir.mkdir(parents=True, exist_ok=True)
        report = soak(args, log_dir)
        _print(report)
        if args.output:
            Path(args.output).write_text(json.dumps(report, indent=2))
        ok = all(report["checks"].values())
        if not ok and args.log_dir is None:
            for log in sorted(log_dir.glob("*.log")):
                print(f"--- {log.name} (tail)\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
