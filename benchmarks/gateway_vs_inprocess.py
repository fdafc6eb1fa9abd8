"""Tokens/s of the same greedy prompts in-process and through the gateway, interleaved in one run.

Usage: python benchmarks/gateway_vs_inprocess.py [--model default] [--method ngram] [-k 5] [--max-tokens 128]
Starts `splitspec up` on free loopback ports, stops it at the end. `splitspec bench` will supersede this.
"""

from __future__ import annotations

import argparse
import time

import grpc

from splitspec import LLM, SamplingParams
from splitspec.entrypoints.client import build_request
from splitspec.entrypoints.service_processes import start_service
from splitspec.net_ports import free_port
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc

QUESTIONS = [
    "Write a Python function to calculate fibonacci numbers.",
    "Explain what a hash table is in three sentences.",
    "Rewrite in formal English: gonna grab food, back in 10, dont start without me.",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("--method", default="ngram")
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    llm = LLM(args.model, speculative_config={"method": args.method, "num_speculative_tokens": args.k})
    prompts = [llm.apply_chat_template([{"role": "user", "content": q}]) for q in QUESTIONS]
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    ports = [free_port() for _ in range(3)]
    up_args = ["up", "--model", args.model, "--method", args.method, "-k", str(args.k)]
    up_args += ["--verifier-port", str(ports[1]), "--proposer-port", str(ports[2])]
    up = start_service("up", up_args, None, port=ports[0], grace_seconds=None, timeout=300)
    totals = {"in-process": [0, 0.0], "gateway": [0, 0.0]}
    try:
        with grpc.insecure_channel(up.address) as channel:
            stub = pb_grpc.GatewayStub(channel)
            for _ in range(args.rounds):
                for prompt in prompts:
                    start = time.perf_counter()
                    local = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids
                    totals["in-process"][0] += len(local)
                    totals["in-process"][1] += time.perf_counter() - start
                    start = time.perf_counter()
                    remote = [
                        t
                        for r in stub.Generate(build_request(prompt, temperature=0, max_tokens=args.max_tokens))
                        for t in r.token_ids
                    ]
                    totals["gateway"][0] += len(remote)
                    totals["gateway"][1] += time.perf_counter() - start
                    assert remote == local, "gateway output differs from in-process output"
    finally:
        up.stop(timeout=60)
    rate = {name: n / t for name, (n, t) in totals.items()}
    for name, (n, t) in totals.items():
        print(f"{name:>10}: {n} tokens in {t:.2f} s = {rate[name]:.1f} tokens/s")
    print(f"gateway / in-process = {rate['gateway'] / rate['in-process']:.3f} (outputs identical token for token)")


if __name__ == "__main__":
    main()
