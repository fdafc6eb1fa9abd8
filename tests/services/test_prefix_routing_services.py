"""Two verifiers behind one gateway, each with its prefix cache: requests that share a beginning go to
the verifier the key prefers and find their prefix cached there; with --no-prefix-routing they go to
the least loaded one, whatever they start with (idle verifiers tie, so they alternate). Output is
in-process output either way."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
from e2e_requests import generate
from metrics_scrape import scrape, value

from gateway_svc.prefix_routing import prefix_key, verifier_order
from splitspec import LLM, SamplingParams
from splitspec.entrypoints.client import build_request
from splitspec.entrypoints.service_processes import start_service

pytestmark = pytest.mark.e2e
MAX_TOKENS = 8


def _prefixes(addresses: list[str]) -> dict[str, list[int]]:
    """A 48-token beginning that prefers each verifier."""
    found: dict[str, list[int]] = {}
    for start in range(3, 250):
        prefix = [(start + 7 * i) % 250 + 3 for i in range(48)]
        best = verifier_order([_Listed(a) for a in addresses], prefix_key(prefix + [1]))[0].address
        found.setdefault(best, prefix)
        if len(found) == len(addresses):
            return found
    raise AssertionError("no beginning prefers one of the verifiers")


class _Listed:
    def __init__(self, address: str) -> None:
        self.address, self.load = address, 0.0


def _queries_and_hits(verifier) -> tuple[float, float]:
    families = scrape(verifier.metrics_port)
    return (
        value(families["splitspec_prefix_cache_queries"], "_total"),
        value(families["splitspec_prefix_cache_hits"], "_total"),
    )


@pytest.mark.parametrize("routing", [True, False], ids=["prefix routing", "least loaded"])
def test_requests_sharing_a_beginning_meet_their_cached_prefix(tiny_llama, tmp_path, routing):
    with ExitStack() as cleanup:
        verifiers = []
        for i in range(2):
            args = ["serve-verifier", "--model", str(tiny_llama)]
            verifiers.append(start_service(f"verifier{i}", args, tmp_path, metrics=True))
            cleanup.callback(verifiers[-1].stop)
        gateway_args = ["serve-gateway", "--model", str(tiny_llama), "--method", "ngram", "-k", "3"]
        gateway_args += ["--verifiers", ",".join(v.address for v in verifiers)]
        gateway_args += [] if routing else ["--no-prefix-routing"]
        gateway = start_service("gateway", gateway_args, tmp_path)
        cleanup.callback(gateway.stop)
        prefixes = _prefixes([v.address for v in verifiers])
        llm = LLM(str(tiny_llama))
        params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
        for verifier in verifiers:
            before = [_queries_and_hits(v) for v in verifiers]
            prompts = [prefixes[verifier.address] + [100 + i, 20 + i] for i in range(3)]
            for prompt in prompts:  # one after another: each finds the blocks of the one before
                request = build_request(prompt, temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
                got = [t for r in generate(gateway.address, request) for t in r.token_ids]
                expected = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0]
                assert got == expected.outputs[0].token_ids
            after = [_queries_and_hits(v) for v in verifiers]
            served = [a[0] - b[0] for a, b in zip(after, before)]
            found = [a[1] - b[1] for a, b in zip(after, before)]
            if routing:  # all on the verifier the beginning prefers, the later two finding its 3 blocks
                assert served[verifiers.index(verifier)] == sum(len(p) for p in prompts), served
                assert found[verifiers.index(verifier)] == 2 * 48, found
            else:  # wherever the load sends them
                assert sum(served) == sum(len(p) for p in prompts), served
