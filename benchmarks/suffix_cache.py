"""What suffix decoding's memory costs on a proposer pod: draft latency and memory with many cached answers.

Fills a SuffixProposer's global tree with `--cached` answers (standard-library source cut into
answers of `--answer-tokens` tokens by the default model's tokenizer: real text, real token ids),
the way the proposer service fills it (a request's output arrives a round at a time), then serves
new requests one round at a time, half of them repeating a cached answer and half fresh, and times
each call to `propose` (committing the round's tokens to both trees, then drafting).

    python benchmarks/suffix_cache.py --cached 10000
"""

from __future__ import annotations

import argparse
import random
import resource
import sysconfig
import time
from pathlib import Path

from proposer_svc.suffix import SuffixProposer
from splitspec.drafts import DraftRequest
from splitspec.suffix_settings import SuffixSettings

ROUND_TOKENS = 8  # tokens committed per round while answers are cached (the speed of a good round)


def resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def answers(tokenizer, n: int, length: int) -> list[list[int]]:
    """n answers of `length` tokens of standard-library source, cycling through it if n needs more."""
    chunks: list[list[int]] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        ids = tokenizer.encode(path.read_text(errors="ignore"))
        chunks += [ids[i : i + length] for i in range(0, len(ids) - length, length)]
        if len(chunks) >= n:
            break
    return [chunks[i % len(chunks)] for i in range(n)]


def serve(proposer: SuffixProposer, seq_id: str, prompt: list[int], output: list[int], num_tokens: int) -> list[float]:
    """One request, a round of ROUND_TOKENS committed tokens at a time; the seconds of each propose call."""
    seconds = []
    for end in range(0, len(output) + 1, ROUND_TOKENS):
        request = DraftRequest(seq_id, prompt + output[:end], num_tokens, num_prompt_tokens=len(prompt))
        started = time.perf_counter()
        proposer.propose([request])
        seconds.append(time.perf_counter() - started)
    proposer.release(seq_id)
    return seconds


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cached", type=int, default=10000, help="answers in the global tree")
    parser.add_argument("--answer-tokens", type=int, default=256)
    parser.add_argument("--requests", type=int, default=200, help="requests timed after filling")
    parser.add_argument("-k", type=int, default=24)
    args = parser.parse_args()

    from splitspec.default_model import ensure_default_model
    from splitspec.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(ensure_default_model())
    texts = answers(tokenizer, args.cached + args.requests, args.answer_tokens)
    proposer = SuffixProposer(SuffixSettings(max_cached_requests=args.cached))
    before = resident_bytes()
    started = time.perf_counter()
    for i, text in enumerate(texts[: args.cached]):
        serve(proposer, f"fill-{i}", [1, 2, 3], text, 0)
        if (i + 1) % 1000 == 0:
            print(f"cached {i + 1} answers, {time.perf_counter() - started:.0f} s", flush=True)
    filled = time.perf_counter() - started
    cached_tokens = proposer.global_tree.num_tokens
    grown = resident_bytes() - before
    print(f"{proposer.num_cached_requests} answers, {cached_tokens} tokens cached in {filled:.0f} s "
          f"({filled / cached_tokens * 1e6:.1f} us per token)")  # fmt: skip
    print(f"resident memory grew {grown / 2**20:.0f} MiB: {grown / cached_tokens:.0f} bytes per cached token, "
          f"{proposer.global_tree.num_nodes() / cached_tokens:.2f} tree nodes per token")  # fmt: skip

    rng = random.Random(0)
    latencies: dict[str, list[float]] = {"repeated": [], "fresh": []}
    for i in range(args.requests):
        repeated = i % 2 == 0
        output = texts[rng.randrange(args.cached)] if repeated else texts[args.cached + i]
        kind = "repeated" if repeated else "fresh"
        latencies[kind] += serve(proposer, f"timed-{i}", [4, 5, 6], output, args.k)
    for kind, seconds in latencies.items():
        print(f"draft latency, {kind} answers: p50 {percentile(seconds, 0.5) * 1e6:.0f} us, "
              f"p99 {percentile(seconds, 0.99) * 1e6:.0f} us over {len(seconds)} rounds")  # fmt: skip


if __name__ == "__main__":
    main()
