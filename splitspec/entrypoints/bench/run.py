"""Run every configuration over the same prompts, interleaved, and report one table plus JSON."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from splitspec.config import DEFAULT_NUM_SPECULATIVE_TOKENS
from splitspec.entrypoints.bench.chart import write_load_chart
from splitspec.entrypoints.bench.load import format_load_table, load_sweep, warm_up
from splitspec.entrypoints.bench.runners import (
    BenchPrompt,
    HFGenerate,
    LlamaCppGenerate,
    SplitspecGateway,
    SplitspecGatewayHttp,
    SplitspecInProcess,
)
from splitspec.entrypoints.bench.timing import RequestTiming, Summary, summarise
from splitspec.entrypoints.bench.workloads import SHARED_PREFIX, build_prompts
from splitspec.entrypoints.service_processes import ServiceProcess, start_service
from splitspec.net_ports import free_port
from splitspec.suffix_settings import SuffixSettings

SUFFIX_K = SuffixSettings().max_tree_depth
DEEP_SUFFIX_K, DEEP_SUFFIX_DEPTH = 32, 64


@dataclass(frozen=True)
class BenchSettings:
    model: str = "default"
    draft_model: str | None = None
    speculator: str | None = "auto"
    """An MLP speculator to bench too: a checkpoint, "auto" (the one `splitspec train-speculator` saved
    for this model, if any) or None."""
    eagle3: str | None = "auto"
    """An EAGLE-3 head to bench too: a checkpoint, "auto" (the one `splitspec train-speculator --method
    eagle3` saved for this model, if any) or None."""
    workloads: tuple[str, ...] = ("humaneval", "code_edit", "summarise", "chat", "json")
    prompts_per_workload: int = 3
    max_tokens: int = 128
    num_speculative_tokens: int = DEFAULT_NUM_SPECULATIVE_TOKENS
    concurrency: tuple[int, ...] = (1, 4, 16)
    request_rates: tuple[float, ...] = ()
    """Open-loop levels: requests per second arriving as a Poisson process (vLLM's --request-rate)."""
    num_requests: int = 32
    """Requests per request-rate level."""
    gateway: bool = True
    traced_gateway: bool = False
    """Also a second stack with OpenTelemetry tracing on, exporting every span to a local OTLP receiver."""
    hf: bool = True
    seed: int = 0
    output: str = "bench.json"
    device: str = "auto"
    enforce_eager: bool = False
    """Every target without CUDA graphs."""
    network_delays_ms: tuple[float, ...] = (0.0,)
    """One gateway stack per one-way delay on its links (splitspec up --network-delay-ms)."""
    eager_rows: bool = False
    """Also K=0 and ngram with enforce_eager, beside the same with CUDA graphs (on CUDA)."""
    remote_ngram_rows: bool = False
    """Also, at each delay, n-grams drafted on the proposer (a drafter a hop away): pipelined with drafts
    made ahead (the default), drafting ahead one step at a time, and neither."""
    unpipelined_rows: bool = False
    """Also, at each delay, the gateway's n-gram rounds one at a time (--no-pipeline)."""
    direct_drafts_rows: bool = False
    """Also, at each delay, n-grams drafted on the proposer: fetched by the gateway (drafts made ahead,
    the default), and fetched by the verifier itself (--direct-drafts), with and without drafts made ahead
    for a rejection; with a draft model, it too both ways with --direct-drafts."""
    quantization: str | None = None
    """Every splitspec target's projections quantized (LLM's quantization; `up --quantization`)."""
    draft_quantization: str | None = None
    """The draft model's, for the draft_model rows."""
    llama_cpp: bool = False
    """Also llama.cpp, plain and with its prompt lookup, on the GGUF the model was converted from."""
    configs_only: tuple[str, ...] = field(default=())


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _start_stack(
    model: str,
    k: int,
    device: str,
    env: dict[str, str] | None = None,
    delay_ms: float = 0.0,
    up_flags: tuple[str, ...] = (),
    quantization: str | None = None,
) -> ServiceProcess:
    """`splitspec up` on free loopback ports, serving before this returns; the gateway at its address."""
    ports = [free_port() for _ in range(3)]
    args = ["up", "--model", model, "-k", str(k), "--verifier-port", str(ports[1]), "--proposer-port", str(ports[2])]
    if quantization:
        args += ["--quantization", quantization]
    args += ["--device", device, "--network-delay-ms", str(delay_ms), *up_flags]
    stack = start_service("up", args, None, port=ports[0], grace_seconds=None, timeout=300, env=env)
    _log(f"the stack's log: {stack.log}")
    return stack


def _trained(settings: BenchSettings, chosen: str | None, method: str) -> Path | None:
    """The speculator to bench: `chosen`, or with "auto" the one train-speculator saved for the model."""
    if chosen is None:
        return None
    if chosen != "auto":
        return Path(chosen)
    from splitspec.entrypoints.train_speculator import default_speculator_dir

    trained = default_speculator_dir(settings.model, method)
    if (trained / "config.json").is_file():
        _log(f"benching the trained {method} {trained}")
        return trained
    _log(f"no trained {method} for this model (`splitspec train-speculator --method {method}` makes one); skipping it")
    return None


def _eagle3_k(head: Path) -> int:
    """The drafts per round a speculators-format head was trained for."""
    return json.loads((head / "config.json").read_text())["speculators_config"]["proposal_methods"][0][
        "speculative_tokens"
    ]


def run_bench(settings: BenchSettings) -> dict:
    """Load every configuration, time them prompt by prompt, interleaved, then under load (concurrency
    and request rate, bench/load.py)."""
    from splitspec.checkpoint import resolve_checkpoint

    path = resolve_checkpoint(settings.model)
    _log(f"loading {settings.model} ({path})")
    plain = _llm(path, settings)
    bench_prompts = _bench_prompts(plain, settings)
    configs = _in_process_configs(plain, path, settings)
    eagle3 = _trained(settings, settings.eagle3, "eagle3")
    stacks = []
    for delay in settings.network_delays_ms if settings.gateway else ():
        suffix = f" +{delay:g}ms" if delay else ""
        _log(f"starting the gateway stack (splitspec up{f' --network-delay-ms {delay:g}' if delay else ''})")
        http_port = free_port()
        stack = _start_stack(
            str(path), settings.num_speculative_tokens, settings.device, delay_ms=delay,
            up_flags=() if delay else ("--http-port", str(http_port)), quantization=settings.quantization,
        )  # fmt: skip
        stacks.append(stack)
        configs.append(SplitspecGateway(f"gateway K=0{suffix}", stack.address, num_speculative_tokens=0))
        configs.append(SplitspecGateway(f"gateway ngram K={settings.num_speculative_tokens}{suffix}", stack.address))
        if not delay:  # the same stack through the OpenAI-compatible HTTP API
            base_url = f"http://127.0.0.1:{http_port}/v1"
            name = f"gateway HTTP ngram K={settings.num_speculative_tokens}"
            configs.append(SplitspecGatewayHttp(name, base_url, str(path)))
        variants = {}
        if "repeats" in settings.workloads and not delay:  # the proposer pod's memory
            variants[f"suffix K={SUFFIX_K}"] = ("--method", "suffix", "-k", str(SUFFIX_K))
        if settings.unpipelined_rows:
            variants["ngram K={k} no-pipeline"] = ("--no-pipeline",)
        if settings.remote_ngram_rows:
            variants["ngram@proposer K={k}"] = ("--ngram-on-proposers",)
            variants["ngram@proposer K={k} no-pipeline"] = ("--ngram-on-proposers", "--no-pipeline")
            variants["ngram@proposer K={k} no-ahead"] = ("--ngram-on-proposers", "--no-draft-ahead")
        if settings.direct_drafts_rows:
            variants["ngram@proposer K={k}"] = ("--ngram-on-proposers",)
            variants["ngram@proposer K={k} direct"] = ("--ngram-on-proposers", "--direct-drafts")
            variants["ngram@proposer K={k} direct ahead-rejections=1"] = (
                "--ngram-on-proposers", "--direct-drafts", "--draft-ahead-rejections", "1",
            )  # fmt: skip
        if eagle3 is not None and not delay:  # both placements: beside the target (up's default), on a proposer
            head = ("--method", "eagle3", "--draft-model", str(eagle3), "-k", str(_eagle3_k(eagle3)))
            variants[f"eagle3 K={_eagle3_k(eagle3)}"] = head
            variants[f"eagle3@proposer K={_eagle3_k(eagle3)}"] = (*head, "--speculator-on", "proposer")
        if settings.draft_model:  # drafted where measured best (the default), and on the proposer only
            draft_flags = ("--method", "draft_model", "--draft-model", settings.draft_model)
            variants["draft_model K={k}"] = draft_flags
            variants["draft_model K={k} no-verifier-ngram"] = (*draft_flags, "--no-verifier-ngram")
            if settings.direct_drafts_rows:
                variants["draft_model K={k} direct"] = (*draft_flags, "--direct-drafts")
                variants["draft_model K={k} direct ahead-rejections=1"] = (
                    *draft_flags, "--direct-drafts", "--draft-ahead-rejections", "1",
                )  # fmt: skip
        for variant, flags in variants.items():
            _log(f"starting a stack with splitspec up {' '.join(flags)}")
            stack = _start_stack(
                str(path),
                settings.num_speculative_tokens,
                settings.device,
                delay_ms=delay,
                up_flags=flags,
                quantization=settings.quantization,
            )
            stacks.append(stack)
            name = f"gateway {variant.format(k=settings.num_speculative_tokens)}{suffix}"
            configs.append(SplitspecGateway(name, stack.address))
    traced, sink = None, None
    if settings.traced_gateway:
        from splitspec.entrypoints.bench.otlp_sink import start_otlp_sink

        sink, endpoint, spans = start_otlp_sink()
        _log(f"starting a second stack with tracing on, exporting to {endpoint}")
        env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint}
        traced = _start_stack(
            str(path), settings.num_speculative_tokens, settings.device, env, quantization=settings.quantization
        )
        configs.append(SplitspecGateway(f"gateway ngram K={settings.num_speculative_tokens} traced", traced.address))
    if settings.hf:
        configs += _hf_configs(plain, path, settings)
    if settings.llama_cpp:
        configs += _llama_cpp_configs(plain, path, settings)
    if settings.configs_only:
        configs = [c for c in configs if c.name in settings.configs_only or c.name == "splitspec K=0"]
    try:
        timings = _run_interleaved(configs, bench_prompts, settings.max_tokens)
        ours = [c for c in configs if isinstance(c, SplitspecInProcess)]
        ours += [c for c in configs if isinstance(c, (SplitspecGateway, SplitspecGatewayHttp))]
        reference = {t.prompt: t.token_ids for t in timings.get("splitspec K=0", [])}
        sweep = load_sweep(
            ours, bench_prompts, settings.max_tokens, settings.concurrency, settings.request_rates,
            settings.num_requests, settings.seed, reference, _log,
        )  # fmt: skip
    finally:
        for stack in (*stacks, traced):
            if stack is not None:
                stack.stop(timeout=60)
        if sink is not None:
            _log(f"the traced stack exported {spans.spans} spans")
            sink.stop(0)
    return _report(settings, timings, sweep)


def _bench_prompts(plain, settings: BenchSettings) -> list[BenchPrompt]:
    """The workloads' prompts, chat-templated where the model has a template, as token ids."""
    tokenizer = plain.get_tokenizer()
    bench_prompts = []
    for p in build_prompts(list(settings.workloads), settings.prompts_per_workload, settings.seed):
        text = (
            plain.apply_chat_template([{"role": "user", "content": p.text}])
            if getattr(tokenizer, "chat_template", None)
            else p.text
        )
        bench_prompts.append(BenchPrompt(p, tokenizer.encode(text)))
    return bench_prompts


def _in_process_configs(plain, path: Path, settings: BenchSettings) -> list:

    k = settings.num_speculative_tokens
    configs = [SplitspecInProcess("splitspec K=0", plain)]
    if set(SHARED_PREFIX) & set(settings.workloads):  # the same, computing every prompt whole
        configs.append(SplitspecInProcess("splitspec K=0 no prefix cache", _llm(path, settings, prefix_caching=False)))
    configs.append(
        SplitspecInProcess(
            f"splitspec ngram K={k}",
            _llm(path, settings, {"method": "ngram", "num_speculative_tokens": k}),
        )
    )
    suffixes = {f"splitspec suffix K={SUFFIX_K}": {"method": "suffix"}}  # vLLM's defaults
    if "repeats" in settings.workloads:  # a deeper tree drafts longer runs of a remembered answer
        suffixes[f"splitspec suffix K={DEEP_SUFFIX_K} d={DEEP_SUFFIX_DEPTH}"] = {
            "method": "suffix",
            "num_speculative_tokens": DEEP_SUFFIX_K,
            "suffix_decoding_max_tree_depth": DEEP_SUFFIX_DEPTH,
        }
    for name, spec in suffixes.items():
        configs.append(SplitspecInProcess(name, _llm(path, settings, spec)))
    if settings.draft_model:
        spec = {"method": "draft_model", "model": settings.draft_model, "num_speculative_tokens": k}
        if settings.draft_quantization:
            spec["quantization"] = settings.draft_quantization
        configs.append(SplitspecInProcess(f"splitspec draft K={k}", _llm(path, settings, spec)))
    eagle3 = _trained(settings, settings.eagle3, "eagle3")
    if eagle3 is not None:
        k3 = _eagle3_k(eagle3)
        for fixed in (False, True):  # fixed: what the head yields per pass, drafting every round
            spec = {"method": "eagle3", "model": str(eagle3), "num_speculative_tokens": k3, "adaptive": not fixed}
            configs.append(
                SplitspecInProcess(f"splitspec eagle3 K={k3}{' fixed' if fixed else ''}", _llm(path, settings, spec))
            )
    speculator = _trained(settings, settings.speculator, "mlp_speculator")
    if speculator is not None:
        n_predict = json.loads((speculator / "config.json").read_text())["n_predict"]
        configs.append(
            SplitspecInProcess(
                f"splitspec mlp_spec K={n_predict}",
                _llm(path, settings, {"model": str(speculator), "num_speculative_tokens": n_predict}),
            )
        )
    if settings.eager_rows:
        ngram = {"method": "ngram", "num_speculative_tokens": k}
        for name, spec in (("splitspec K=0 eager", None), (f"splitspec ngram K={k} eager", ngram)):
            configs.append(SplitspecInProcess(name, _llm(path, settings, spec, enforce_eager=True)))
    return configs


def _llm(
    path: Path,
    settings: BenchSettings,
    spec: dict | None = None,
    enforce_eager: bool | None = None,
    prefix_caching: bool = True,
):
    """An in-process configuration: the target as the settings load it, with this drafter."""
    from splitspec import LLM

    return LLM(
        str(path),
        speculative_config=spec,
        device=settings.device,
        enforce_eager=settings.enforce_eager if enforce_eager is None else enforce_eager,
        quantization=settings.quantization,
        enable_prefix_caching=prefix_caching,
    )


def _hf_configs(plain, path: Path, settings: BenchSettings) -> list[HFGenerate]:
    from transformers import AutoModelForCausalLM

    from splitspec.checkpoint import resolve_checkpoint

    k = settings.num_speculative_tokens
    device, dtype = plain.runner.device, plain.runner.dtype  # the same as splitspec's target
    hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device).eval()
    eos = sorted(plain.engine.stop_checker.eos_token_ids)
    configs = [
        HFGenerate("HF generate", hf_model, eos),
        HFGenerate(f"HF prompt lookup K={k}", hf_model, eos, prompt_lookup_num_tokens=k),
    ]
    if settings.draft_model:
        draft_path = str(resolve_checkpoint(settings.draft_model))
        draft = AutoModelForCausalLM.from_pretrained(draft_path, dtype=dtype).to(device).eval()
        configs.append(HFGenerate(f"HF assistant K={k}", hf_model, eos, assistant_model=draft, num_assistant_tokens=k))
    return configs


def _llama_cpp_configs(plain, path: Path, settings: BenchSettings) -> list[LlamaCppGenerate]:
    from splitspec.errors import SplitspecError
    from splitspec.models.gguf_weights import gguf_file_of

    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise SplitspecError(
            "--llama-cpp needs llama-cpp-python: pip install 'splitspec[llama-cpp]' (it builds llama.cpp from source)"
        ) from None
    gguf = str(gguf_file_of(path))
    k = settings.num_speculative_tokens
    eos = sorted(plain.engine.stop_checker.eos_token_ids)
    n_ctx = plain.runner.max_model_len
    return [
        LlamaCppGenerate("llama.cpp", gguf, eos, n_ctx),
        LlamaCppGenerate(f"llama.cpp prompt lookup K={k}", gguf, eos, n_ctx, prompt_lookup=k),
    ]


def _run_interleaved(
    configs: list, bench_prompts: list[BenchPrompt], max_tokens: int
) -> dict[str, list[RequestTiming]]:
    """Each prompt through every configuration in turn, so machine noise hits them alike. Each
    configuration first answers a warm-up prompt in full, untimed (see _warm_up)."""
    timings: dict[str, list[RequestTiming]] = {c.name: [] for c in configs}
    for c in configs:
        c.run(warm_up(bench_prompts[:1]), max_tokens)
    for i, bp in enumerate(bench_prompts):
        _log(f"prompt {i + 1}/{len(bench_prompts)} ({bp.prompt.workload}: {bp.prompt.name})")
        reference = None
        for c in configs:
            if bp.prompt.structured is not None and not getattr(c, "constrains_output", True):
                continue
            (timing,) = c.run([bp], max_tokens)
            if c.name == "splitspec K=0":
                reference = timing.token_ids
            timing.matches_reference = timing.token_ids == reference
            timings[c.name].append(timing)
    return timings


def _report(settings: BenchSettings, timings: dict[str, list[RequestTiming]], sweep: list[dict]) -> dict:
    import torch
    import transformers

    summaries = [summarise(name, ts) for name, ts in timings.items()]
    by_workload = tokens_per_s_by_workload(timings)
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "settings": {k_: (list(v) if isinstance(v, tuple) else v) for k_, v in settings.__dict__.items()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "summary": [s.__dict__ | {"tokens_per_s": s.tokens_per_s} for s in summaries],
        "load": sweep,
        "by_workload": by_workload,
        "requests": [t.to_json() for ts in timings.values() for t in ts],
    }
    Path(settings.output).write_text(json.dumps(report, indent=2))
    print(format_table(summaries, sweep))
    print(format_workload_table(by_workload))
    _log(f"wrote {settings.output}")
    chart = write_load_chart(
        sweep,
        Path(settings.output).with_suffix(".png"),
        f"{settings.model}, {settings.max_tokens} tokens, {report['date']}",
    )
    if chart is not None:
        _log(f"wrote {chart}")
    return report


def tokens_per_s_by_workload(timings: dict[str, list[RequestTiming]]) -> dict[str, dict[str, float]]:
    """workload -> configuration -> its tokens over its time on that workload's prompts."""
    table: dict[str, dict[str, float]] = {}
    for config, requests in timings.items():
        for workload in dict.fromkeys(t.workload for t in requests):
            chosen = [t for t in requests if t.workload == workload]
            elapsed = sum(t.elapsed for t in chosen)
            table.setdefault(workload, {})[config] = sum(t.num_tokens for t in chosen) / elapsed if elapsed else 0.0
    return table


def format_workload_table(by_workload: dict[str, dict[str, float]]) -> str:
    """tok/s per workload and configuration, and its ratio to K=0 on the same prompts."""
    lines = ["", f"{'workload':<16}{'configuration':<30}{'tok/s':>8}{'x K=0':>7}"]
    for workload, rates in by_workload.items():
        base = rates.get("splitspec K=0")
        for config, rate in rates.items():
            ratio = f"{rate / base:>7.2f}" if base else f"{'-':>7}"
            lines.append(f"{workload:<16}{config:<30}{rate:>8.1f}{ratio}")
    return "\n".join(lines)


def format_table(summaries: list[Summary], sweep: list[dict]) -> str:
    base = next((s for s in summaries if s.config == "splitspec K=0"), None)
    ngram = next((s for s in summaries if s.config.startswith("splitspec ngram")), None)
    hf = next((s for s in summaries if s.config == "HF generate"), None)
    header = f"{'configuration':<30}{'tok/s':>8}{'x K=0':>7}{'x ngram':>8}{'x HF':>7}{'TTFT ms':>9}{'ITL p50':>9}{'ITL p99':>9}{'tok/pass':>9}  {'greedy=K0':>9}  acceptance by position"
    lines = [header, "-" * len(header)]
    for s in summaries:
        ratio_base = s.tokens_per_s / base.tokens_per_s if base and base.tokens_per_s else 0.0
        ratio_ngram = s.tokens_per_s / ngram.tokens_per_s if ngram and ngram.tokens_per_s else float("nan")
        ratio_hf = s.tokens_per_s / hf.tokens_per_s if hf and hf.tokens_per_s else 0.0
        per_round = f"{s.mean_tokens_per_round:.2f}" if s.mean_tokens_per_round else "-"
        acceptance = " ".join(f"{a:.2f}" for a in s.acceptance_per_position[:8]) or "-"
        lines.append(
            f"{s.config:<30}{s.tokens_per_s:>8.1f}{ratio_base:>7.2f}{ratio_ngram:>8.2f}{ratio_hf if hf else float('nan'):>7.2f}"
            f"{s.ttft_mean * 1000:>9.0f}{s.itl_p50 * 1000:>9.1f}{s.itl_p99 * 1000:>9.1f}{per_round:>9}  {s.matches:>9}  {acceptance}"
        )
    if sweep:
        lines.append(format_load_table(sweep))
    return "\n".join(lines)
