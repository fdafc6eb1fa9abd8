"""The configurations a benchmark compares, each timing every token's arrival the same way."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace

from splitspec.entrypoints.bench.timing import RequestTiming
from splitspec.entrypoints.bench.workloads import Prompt
from splitspec.sampling_params import SamplingParams

_ids = itertools.count()


@dataclass
class BenchPrompt:
    prompt: Prompt
    token_ids: list[int]


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.perf_counter()))


class SplitspecInProcess:
    """Drives the engine step by step, so token arrival times are exact at any concurrency."""

    def __init__(self, name: str, llm) -> None:
        self.name = name
        self.llm = llm

    def run(
        self, prompts: list[BenchPrompt], max_tokens: int, arrivals: list[float] | None = None
    ) -> list[RequestTiming]:
        """arrivals: seconds after the start at which each prompt arrives (sorted); None: all at once.
        A request that arrives during a step joins the next one; its time counts from its arrival."""
        engine = self.llm.engine
        plain = SamplingParams(temperature=0, max_tokens=max_tokens)
        start = time.perf_counter()
        due = [start + a for a in arrivals] if arrivals is not None else [start] * len(prompts)
        timings = [RequestTiming(self.name, p.prompt.name, p.prompt.workload, t) for p, t in zip(prompts, due)]
        seqs = []
        while len(seqs) < len(prompts) or engine.has_unfinished():
            if not engine.has_unfinished():
                _sleep_until(due[len(seqs)])
            now = time.perf_counter()
            while len(seqs) < len(prompts) and due[len(seqs)] <= now:
                p = prompts[len(seqs)]
                params = replace(plain, structured_outputs=p.prompt.structured)
                seqs.append(engine.add_request(f"bench-{next(_ids)}", None, p.token_ids, params))
            before = [s.num_output_tokens for s in seqs]
            engine.step()
            now = time.perf_counter()
            for seq, timing, n0 in zip(seqs, timings, before):
                if seq.num_output_tokens > n0:
                    timing.arrivals.append((now, seq.num_output_tokens - n0))
        for seq, timing in zip(seqs, timings):
            timing.token_ids = seq.output_token_ids
            stats = seq.stats
            timing.rounds = stats.num_rounds
            timing.drafted, timing.accepted = stats.num_draft_tokens, stats.num_accepted_tokens
            timing.drafted_per_position = list(stats.drafted_per_position)
            timing.accepted_per_position = list(stats.accepted_per_position)
        return timings


class _ArrivalStreamer:
    """transformers streamer: the first put is the prompt, each later put is newly generated tokens."""

    def __init__(self, timing: RequestTiming) -> None:
        self.timing = timing
        self.seen_prompt = False

    def put(self, value) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        tokens = value.reshape(-1).tolist()
        self.timing.arrivals.append((time.perf_counter(), len(tokens)))
        self.timing.token_ids.extend(tokens)

    def end(self) -> None:
        pass


class HFGenerate:
    """Hugging Face transformers `generate` on the same checkpoint, one prompt at a time."""

    constrains_output = False  # no grammar: it sits out prompts with structured outputs

    def __init__(self, name: str, model, eos_token_ids: list[int], **generate_kwargs) -> None:
        self.name = name
        self.model = model
        self.eos_token_ids = eos_token_ids
        self.kwargs = generate_kwargs

    def run(self, prompts: list[BenchPrompt], max_tokens: int) -> list[RequestTiming]:
        import torch

        timings = []
        for p in prompts:
            timing = RequestTiming(self.name, p.prompt.name, p.prompt.workload, time.perf_counter())
            with torch.inference_mode():
                self.model.generate(
                    torch.tensor([p.token_ids], device=self.model.device),
                    attention_mask=torch.ones(1, len(p.token_ids), dtype=torch.long, device=self.model.device),
                    max_new_tokens=max_tokens,
                    do_sample=False,
                    eos_token_id=self.eos_token_ids,
                    pad_token_id=self.eos_token_ids[0],
                    streamer=_ArrivalStreamer(timing),
                    **self.kwargs,
                )
            timings.append(timing)
        return timings


class LlamaCppGenerate:
    """llama.cpp (llama-cpp-python) on the GGUF file, greedy, one prompt at a time; with
    `prompt_lookup` tokens, its own prompt-lookup drafting (LlamaPromptLookupDecoding)."""

    constrains_output = False  # no grammar here: it sits out prompts with structured outputs

    def __init__(self, name: str, gguf_path: str, eos_token_ids: list[int], n_ctx: int, prompt_lookup: int = 0) -> None:
        import os

        from llama_cpp import Llama
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        draft = LlamaPromptLookupDecoding(num_pred_tokens=prompt_lookup) if prompt_lookup else None
        self.name = name
        self.eos_token_ids = set(eos_token_ids)
        self.model = Llama(
            model_path=gguf_path, n_ctx=n_ctx, n_threads=os.cpu_count(), draft_model=draft, verbose=False
        )

    def run(self, prompts: list[BenchPrompt], max_tokens: int) -> list[RequestTiming]:
        timings = []
        for p in prompts:
            self.model.reset()
            timing = RequestTiming(self.name, p.prompt.name, p.prompt.workload, time.perf_counter())
            for token in self.model.generate(p.token_ids, temp=0.0, top_k=1, reset=True):
                if token in self.eos_token_ids:
                    break
                timing.arrivals.append((time.perf_counter(), 1))
                timing.token_ids.append(token)
                if len(timing.token_ids) == max_tokens:
                    break
            timings.append(timing)
        return timings


class SplitspecGateway:
    """The same engine behind `splitspec up`: three processes, streamed over gRPC."""

    def __init__(self, name: str, address: str, num_speculative_tokens: int | None = None) -> None:
        self.name = name
        self.address = address
        self.num_speculative_tokens = num_speculative_tokens

    def run(
        self, prompts: list[BenchPrompt], max_tokens: int, arrivals: list[float] | None = None
    ) -> list[RequestTiming]:
        from concurrent.futures import ThreadPoolExecutor

        import grpc

        from splitspec.entrypoints.client import build_request
        from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc

        def one(p: BenchPrompt, due: float) -> RequestTiming:
            request = build_request(
                p.token_ids,
                temperature=0,
                max_tokens=max_tokens,
                num_speculative_tokens=self.num_speculative_tokens,
                structured_outputs=p.prompt.structured,
            )
            _sleep_until(due)
            timing = RequestTiming(self.name, p.prompt.name, p.prompt.workload, time.perf_counter())
            for response in stub.Generate(request):
                if response.token_ids:
                    timing.arrivals.append((time.perf_counter(), len(response.token_ids)))
                    timing.token_ids.extend(response.token_ids)
                if response.finish_reason:
                    spec = response.speculation
                    timing.rounds, timing.drafted, timing.accepted = (
                        spec.num_rounds,
                        spec.num_draft_tokens,
                        spec.num_accepted_tokens,
                    )
                    timing.drafted_per_position = list(spec.drafted_per_position)
                    timing.accepted_per_position = list(spec.accepted_per_position)
            return timing

        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.GatewayStub(channel)
            with ThreadPoolExecutor(max(1, len(prompts))) as pool:
                return list(pool.map(one, prompts, _due(len(prompts), arrivals)))


class SplitspecGatewayHttp:
    """The same stack through the gateway's OpenAI-compatible HTTP API: /v1/completions streamed by
    server-sent events, with vLLM's `return_token_ids` so that its tokens are compared like the others'."""

    def __init__(self, name: str, base_url: str, model: str, num_speculative_tokens: int | None = None) -> None:
        self.name = name
        self.base_url = base_url
        self.model = model
        self.num_speculative_tokens = num_speculative_tokens

    def run(
        self, prompts: list[BenchPrompt], max_tokens: int, arrivals: list[float] | None = None
    ) -> list[RequestTiming]:
        import http.client
        import json
        from concurrent.futures import ThreadPoolExecutor
        from urllib.parse import urlsplit

        url = urlsplit(self.base_url)

        def one(p: BenchPrompt, due: float) -> RequestTiming:
            body = {"model": self.model, "prompt": p.token_ids, "max_tokens": max_tokens, "temperature": 0,
                    "stream": True, "stream_options": {"include_usage": True}, "return_token_ids": True}  # fmt: skip
            if self.num_speculative_tokens is not None:
                body["speculation"] = {"num_speculative_tokens": self.num_speculative_tokens}
            if p.prompt.structured is not None:
                body["structured_outputs"] = {"json": p.prompt.structured.json}
            _sleep_until(due)
            timing = RequestTiming(self.name, p.prompt.name, p.prompt.workload, time.perf_counter())
            connection = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
            try:
                connection.request(
                    "POST", f"{url.path}/completions", json.dumps(body), {"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                if response.status != 200:
                    raise RuntimeError(f"{self.name}: HTTP {response.status}: {response.read()[:300]!r}")
                while (line := response.readline()) and line.strip() != b"data: [DONE]":
                    if not line.startswith(b"data: "):
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise RuntimeError(f"{self.name}: {chunk['error']['message']}")
                    if not chunk["choices"]:  # the last chunk: usage, with splitspec's speculation stats
                        spec = chunk["usage"]["speculation"]
                        timing.rounds, timing.drafted = spec["num_rounds"], spec["num_draft_tokens"]
                        timing.accepted = spec["num_accepted_tokens"]
                        continue
                    token_ids = chunk["choices"][0].get("token_ids", [])
                    if token_ids:
                        timing.arrivals.append((time.perf_counter(), len(token_ids)))
                        timing.token_ids.extend(token_ids)
            finally:
                connection.close()
            return timing

        with ThreadPoolExecutor(max(1, len(prompts))) as pool:
            return list(pool.map(one, prompts, _due(len(prompts), arrivals)))


def _due(count: int, arrivals: list[float] | None) -> list[float]:
    """When each of `count` requests is sent: at `arrivals` seconds from now, or all now."""
    now = time.perf_counter()
    return [now + a for a in arrivals] if arrivals is not None else [now] * count
