"""Time to first token through one gateway in front of two verifiers, with prefix routing on and off.

Two verifiers (each with its prefix cache) and a gateway in their own processes on loopback, started
once per setting. The requests are bench's `agent` and `multiturn` prompts (long shared beginnings),
chat-templated, sent one after another, each streamed until its first token; each is sent once, so a
prompt finds cached only what an earlier, different prompt left. With routing, requests that share a
beginning go to the verifier it prefers; without, to the least loaded one (idle verifiers tie, so
they alternate). Prints each setting's TTFT per prompt and in all.

Usage: python benchmarks/prefix_routing.py [--model default] [--prompts-per-workload 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import grpc

from splitspec import LLM
from splitspec.entrypoints.bench.workloads import build_prompts
from splitspec.entrypoints.client import build_request
from splitspec.entrypoints.service_processes import start_service
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc


def _first_token_s(address: str, prompt_ids: list[int]) -> float:
    request = build_request(prompt_ids, temperature=0, max_tokens=4, num_speculative_tokens=0)
    with grpc.insecure_channel(address) as channel:
        started = time.perf_counter()
        for response in pb_grpc.GatewayStub(channel).Generate(request, timeout=600):
            if response.token_ids:
                return time.perf_counter() - started
    raise RuntimeError("the gateway answered no token")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--prompts-per-workload", type=int, default=4)
    args = parser.parse_args()
    llm = LLM(args.model)
    model = str(llm.config.model_path)
    prompts = build_prompts(["agent", "multiturn"], args.prompts_per_workload, seed=0)
    token_ids = [llm.tokenizer.encode(llm.apply_chat_template([{"role": "user", "content": p.text}])) for p in prompts]
    del llm
    log_dir = Path(tempfile.mkdtemp(prefix="prefix_routing-"))
    results = {}
    for routing in (True, False):
        with ExitStack() as cleanup:
            verifiers = []
            for i in range(2):
                verifier = start_service(f"verifier{i}", ["serve-verifier", "--model", model], log_dir, timeout=900)
                cleanup.callback(verifier.stop)
                verifiers.append(verifier)
            gateway_args = ["serve-gateway", "--model", model, "--method", "ngram"]
            gateway_args += ["--verifiers", ",".join(v.address for v in verifiers)]
            gateway_args += [] if routing else ["--no-prefix-routing"]
            gateway = start_service("gateway", gateway_args, log_dir)
            cleanup.callback(gateway.stop)
            _first_token_s(gateway.address, token_ids[0][::-1])  # warm-up: shares no block with the prompts
            results[routing] = [_first_token_s(gateway.address, ids) for ids in token_ids]
    print(f"{'prompt':<34} {'tokens':>6} {'TTFT routed ms':>15} {'TTFT least loaded ms':>21}")
    for prompt, ids, on, off in zip(prompts, token_ids, results[True], results[False]):
        print(f"{prompt.name:<34} {len(ids):>6} {on * 1e3:>15.0f} {off * 1e3:>21.0f}")
    for routing in (True, False):
        times = results[routing]
        print(f"{'routed' if routing else 'least loaded'}: TTFT mean {statistics.mean(times) * 1e3:.0f} ms, "
              f"median {statistics.median(times) * 1e3:.0f} ms")  # fmt: skip
    print(f"logs: {log_dir}")


if __name__ == "__main__":
    main()
