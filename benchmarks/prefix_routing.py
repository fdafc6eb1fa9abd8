"""Time to first token and prefix-cache hit rate through one gateway: in front of one verifier, and of
two with prefix routing on and off.

Verifiers (each with its prefix cache) and a gateway in their own processes on loopback, started once
per setting. The requests are bench's `agent` and `multiturn` prompts (long shared beginnings),
chat-templated, sent one after another, each streamed until its first token; each is sent once, so a
prompt finds cached only what an earlier, different prompt left. With routing, requests that share a
beginning go to the verifier it prefers; without, to the least loaded one (idle verifiers tie, so
they alternate). Prints each setting's TTFT per prompt, and each workload's hit rate (prompt tokens
found in a verifier's cache over those looked up, from the verifiers' /metrics).

Usage: python benchmarks/prefix_routing.py [--model default] [--prompts-per-workload 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from splitspec import LLM
from splitspec.entrypoints.bench.workloads import build_prompts
from splitspec.entrypoints.client import build_request
from splitspec.entrypoints.service_processes import ServiceProcess, start_service
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc

SETTINGS = {"one verifier": (1, True), "two, routed": (2, True), "two, least loaded": (2, False)}


def _first_token_s(address: str, prompt_ids: list[int]) -> float:
    request = build_request(prompt_ids, temperature=0, max_tokens=4, num_speculative_tokens=0)
    with grpc.insecure_channel(address) as channel:
        started = time.perf_counter()
        for response in pb_grpc.GatewayStub(channel).Generate(request, timeout=600):
            if response.token_ids:
                return time.perf_counter() - started
    raise RuntimeError("the gateway answered no token")


def _looked_up_and_found(verifiers: list[ServiceProcess]) -> tuple[float, float]:
    """Prompt tokens the verifiers have looked up in their prefix caches, and found there."""
    totals = {"splitspec_prefix_cache_queries": 0.0, "splitspec_prefix_cache_hits": 0.0}
    for verifier in verifiers:
        with urllib.request.urlopen(f"http://127.0.0.1:{verifier.metrics_port}/metrics", timeout=10) as response:
            for family in text_string_to_metric_families(response.read().decode()):
                for sample in family.samples:
                    name = sample.name.removesuffix("_total")
                    if name in totals and sample.name.endswith("_total"):
                        totals[name] += sample.value
    return totals["splitspec_prefix_cache_queries"], totals["splitspec_prefix_cache_hits"]


def _run(model: str, log_dir: Path, verifiers_n: int, routing: bool, prompts, token_ids) -> tuple[list, dict]:
    """TTFT per prompt, and hit rate per workload."""
    with ExitStack() as cleanup:
        verifiers = []
        for i in range(verifiers_n):
            args = ["serve-verifier", "--model", model]
            verifiers.append(start_service(f"verifier{i}", args, log_dir, timeout=900, metrics=True))
            cleanup.callback(verifiers[-1].stop)
        gateway_args = ["serve-gateway", "--model", model, "--method", "ngram"]
        gateway_args += ["--verifiers", ",".join(v.address for v in verifiers)]
        gateway_args += [] if routing else ["--no-prefix-routing"]
        gateway = start_service("gateway", gateway_args, log_dir)
        cleanup.callback(gateway.stop)
        _first_token_s(gateway.address, token_ids[0][::-1])  # warm-up: shares no block with the prompts
        ttft, looked_up, found = [], {}, {}
        for prompt, ids in zip(prompts, token_ids):
            before = _looked_up_and_found(verifiers)
            ttft.append(_first_token_s(gateway.address, ids))
            after = _looked_up_and_found(verifiers)
            looked_up[prompt.workload] = looked_up.get(prompt.workload, 0) + after[0] - before[0]
            found[prompt.workload] = found.get(prompt.workload, 0) + after[1] - before[1]
    return ttft, {w: found[w] / looked_up[w] for w in looked_up}


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
    results = {name: _run(model, log_dir, n, routing, prompts, token_ids) for name, (n, routing) in SETTINGS.items()}
    print(f"{'prompt':<34} {'tokens':>6}" + "".join(f" {name + ' ms':>22}" for name in SETTINGS))
    for i, (prompt, ids) in enumerate(zip(prompts, token_ids)):
        print(f"{prompt.name:<34} {len(ids):>6}" + "".join(f" {results[n][0][i] * 1e3:>22.0f}" for n in SETTINGS))
    for name, (ttft, hit_rates) in results.items():
        rates = ", ".join(f"{w} {rate:.0%}" for w, rate in hit_rates.items())
        print(f"{name}: TTFT mean {statistics.mean(ttft) * 1e3:.0f} ms, median {statistics.median(ttft) * 1e3:.0f} ms; "
              f"hit rate {rates}")  # fmt: skip
    print(f"logs: {log_dir}")


if __name__ == "__main__":
    main()
