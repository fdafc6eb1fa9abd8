"""The `splitspec` command."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict

from splitspec.config import (
    DEFAULT_NUM_SPECULATIVE_TOKENS,
    METHODS_WITHOUT_MODEL,
    QUANTIZATIONS,
    SPECULATION_METHODS,
)
from splitspec.entrypoints.cli_flags import (
    add_device_flag,
    add_enforce_eager_flag,
    add_suffix_flags,
    add_tensor_parallel_flag,
    quantization_flag,
    suffix_settings_from,
)
from splitspec.entrypoints.flag_table import add_flags
from splitspec.errors import SplitspecError


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text in-process (default model unless --model)")
    p.add_argument("prompt", help="the prompt text")
    p.add_argument(
        "--model", default="default", help="checkpoint directory, hub id, or 'default' (SmolLM2-135M-Instruct)"
    )
    p.add_argument("--method", choices=[*SPECULATION_METHODS, "none"], default="ngram", help="speculation method")
    p.add_argument(
        "--num-speculative-tokens",
        "-k",
        type=int,
        default=DEFAULT_NUM_SPECULATIVE_TOKENS,
        help="most draft tokens per round",
    )
    p.add_argument(
        "--draft-model", help="draft, MLP speculator or EAGLE checkpoint for the methods other than ngram and suffix"
    )
    p.add_argument("--prompt-lookup-max", type=int, default=4)
    p.add_argument("--prompt-lookup-min", type=int, default=1)
    add_suffix_flags(p)
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=-1)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--raw", action="store_true", help="send the prompt as is, without the model's chat template")
    p.add_argument("--gateway", metavar="HOST:PORT", help="stream from a running gateway instead of running in-process")
    p.add_argument(
        "--api-key",
        default=os.environ.get("SPLITSPEC_API_KEY", "").split(",")[0] or None,
        help="with --gateway: the key a gateway started with --api-key asks for (env SPLITSPEC_API_KEY)",
    )
    p.add_argument(
        "--tls-ca-file",
        default=os.environ.get("SPLITSPEC_TLS_CA_FILE"),
        help="with --gateway: connect over TLS, trusting the gateway's certificate if this CA signed it "
        "(env SPLITSPEC_TLS_CA_FILE; `splitspec up --tls-dir DIR` makes DIR/ca.pem)",
    )
    add_device_flag(p, "the model (in-process)")
    add_tensor_parallel_flag(p)
    add_enforce_eager_flag(p)
    add_flags(p, [quantization_flag("the model (in-process)")])
    p.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    from splitspec import LLM, SamplingParams

    if args.gateway:
        return _generate_via_gateway(args)
    if args.method not in (*METHODS_WITHOUT_MODEL, "none") and not args.draft_model:
        raise SplitspecError(f"--method {args.method} needs --draft-model DIR (a checkpoint made for this target)")
    if args.method != "none" and args.num_speculative_tokens < 1:
        raise SplitspecError("--num-speculative-tokens must be at least 1 (or use --method none)")
    if args.max_tokens < 1:
        raise SplitspecError("--max-tokens must be at least 1")
    spec = None
    if args.method != "none":
        spec = {"method": args.method, "num_speculative_tokens": args.num_speculative_tokens}
        if args.method == "ngram":
            spec.update(prompt_lookup_max=args.prompt_lookup_max, prompt_lookup_min=args.prompt_lookup_min)
        elif args.method == "suffix":
            suffix = suffix_settings_from(args)
            spec.update({f"suffix_decoding_{key}": value for key, value in asdict(suffix).items()})
        else:
            spec["model"] = args.draft_model
            spec["method"] = args.method
    params = SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_tokens=args.max_tokens,
        seed=args.seed,
        stop=args.stop,
    )
    llm = LLM(
        args.model,
        speculative_config=spec,
        device=args.device,
        tensor_parallel_size=args.tensor_parallel_size,
        enforce_eager=args.enforce_eager,
        quantization=args.quantization,
    )
    tokenizer = llm.get_tokenizer()
    prompt = args.prompt
    if not args.raw and tokenizer is not None and getattr(tokenizer, "chat_template", None):
        prompt = llm.apply_chat_template([{"role": "user", "content": prompt}])
    start = time.perf_counter()
    out = llm.generate([prompt], params, use_tqdm=False)[0]
    elapsed = time.perf_counter() - start
    completion = out.outputs[0]
    print(completion.text)
    stats = out.spec_stats
    n = len(completion.token_ids)
    print(
        f"[{n} tokens in {elapsed:.2f} s, {n / elapsed:.1f} tokens/s, method={args.method}, "
        f"finish_reason={completion.finish_reason}, target passes={stats.num_rounds}, "
        f"mean tokens per pass={stats.mean_accepted_tokens_per_round:.2f}, "
        f"acceptance={stats.acceptance_rate:.2f}]",
        file=sys.stderr,
    )
    return 0


def _generate_via_gateway(args: argparse.Namespace) -> int:
    """Streams text deltas as the gateway sends them. The prompt goes as one user message, which the
    gateway puts through the model's chat template, unless --raw (as in-process)."""
    import grpc

    from splitspec.entrypoints.client import build_request, stream_generate
    from splitspec.rpc.tls import ClientTls

    tls = ClientTls(args.tls_ca_file) if args.tls_ca_file else None

    request = build_request(
        args.prompt if args.raw else [{"role": "user", "content": args.prompt}],
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_tokens=args.max_tokens,
        stop=args.stop,
        seed=args.seed,
        num_speculative_tokens=0 if args.method == "none" else args.num_speculative_tokens,
    )
    start = time.perf_counter()
    count = 0
    try:
        for response in stream_generate(args.gateway, request, api_key=args.api_key, tls=tls):
            count += len(response.token_ids)
            print(response.text, end="", flush=True)
            last = response
    except grpc.RpcError as exc:
        raise SplitspecError(f"gateway {args.gateway}: {exc.code().name}: {exc.details()}") from None
    elapsed = time.perf_counter() - start
    print()
    spec = last.speculation
    print(
        f"[{count} tokens in {elapsed:.2f} s, {count / elapsed:.1f} tokens/s via {args.gateway}, "
        f"finish_reason={last.finish_reason}, target passes={spec.num_rounds}, "
        f"mean tokens per pass={spec.mean_accepted_tokens_per_round:.2f}]",
        file=sys.stderr,
    )
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="side-by-side benchmark: K=0, speculation, gateway, transformers")
    p.add_argument("--model", default="default")
    p.add_argument(
        "--draft-model",
        help="also benchmark draft_model speculation (and HF assistant_model); with the gateway, two stacks at each "
        "delay: rounds drafted where the gateway measures more tokens per second (the verifier's n-grams or the "
        "proposer's draft model), and --no-verifier-ngram",
    )
    p.add_argument(
        "--speculator", default="auto",
        help="MLP speculator to benchmark: a checkpoint, 'auto' (the one train-speculator saved for --model) or 'none'",
    )  # fmt: skip
    p.add_argument(
        "--eagle3", default="auto",
        help="EAGLE-3 head to benchmark: a checkpoint, 'auto' (the one train-speculator --method eagle3 saved for "
        "--model) or 'none'",
    )  # fmt: skip
    p.add_argument(
        "--workloads",
        default="humaneval,code_edit,summarise,chat,json",
        help="comma-separated, of humaneval, code_edit, summarise, chat, json (answers under a JSON schema: "
        "structured outputs; HF and llama.cpp sit it out) and repeats (earlier tasks asked again: what "
        "suffix decoding remembers; with it, a gateway stack with --method suffix too)",
    )
    p.add_argument("--prompts-per-workload", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--num-speculative-tokens", "-k", type=int, default=DEFAULT_NUM_SPECULATIVE_TOKENS)
    p.add_argument(
        "--concurrency", default="1,4,16", help="comma-separated concurrency levels: that many requests at once"
    )
    p.add_argument(
        "--request-rate",
        default="",
        help="comma-separated request rates (requests/s): --num-requests arrive at each as a Poisson process, "
        "as in vLLM's serving benchmark",
    )
    p.add_argument("--num-requests", type=int, default=32, help="requests per --request-rate level")
    p.add_argument("--no-gateway", action="store_true", help="skip the three-process configurations")
    p.add_argument("--no-hf", action="store_true", help="skip Hugging Face transformers")
    p.add_argument(
        "--network-delay-ms",
        default="0",
        help="comma-separated one-way delays: one gateway stack per value, with a TCP proxy delaying each link "
        "between its services (e.g. 0,1,3)",
    )
    p.add_argument(
        "--unpipelined-rows",
        action="store_true",
        help="also, at each delay, a stack whose gateway sends each n-gram round only after the last one's result "
        "(--no-pipeline), beside the default that keeps several in flight",
    )
    p.add_argument(
        "--remote-ngram-rows",
        action="store_true",
        help="also, at each delay, stacks whose proposer drafts the n-grams (a drafter a hop away): the default "
        "(drafts made ahead, pipelined to the verifier), --no-pipeline (drafting ahead one step at a time) and "
        "--no-draft-ahead",
    )
    p.add_argument(
        "--direct-drafts-rows",
        action="store_true",
        help="also, at each delay, stacks whose proposer drafts the n-grams, fetched by the gateway (drafts made "
        "ahead) and by the verifier itself (--direct-drafts), with and without drafting ahead for a rejection "
        "(--draft-ahead-rejections 1); with --draft-model, that too both ways with --direct-drafts",
    )
    p.add_argument(
        "--traced-gateway",
        action="store_true",
        help="add a second gateway stack with OpenTelemetry tracing on (every span exported to a local OTLP "
        "receiver), to measure what tracing costs",
    )
    p.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        help="every splitspec target quantized (K=0, the reference, too): int8, int4, gguf or fp8",
    )
    p.add_argument("--draft-quantization", choices=QUANTIZATIONS, help="the --draft-model quantized")
    p.add_argument(
        "--llama-cpp",
        action="store_true",
        help="also llama.cpp, plain and with its prompt lookup, on the GGUF the model was converted from "
        "(pip install 'splitspec[llama-cpp]')",
    )
    p.add_argument("--seed", type=int, default=0, help="selects the prompts")
    p.add_argument("--output", default="bench.json", help="where to write the JSON report")
    add_device_flag(p, "every configuration's target (transformers' too)")
    add_enforce_eager_flag(p)
    p.add_argument(
        "--eager-rows",
        action="store_true",
        help="also K=0 and ngram in-process with --enforce-eager, beside the rows with CUDA graphs",
    )
    p.add_argument(
        "--quick", action="store_true", help="a small run: 1 prompt each of code_edit and summarise, 32 tokens"
    )
    p.set_defaults(func=_bench)


def _delays_ms(text: str) -> tuple[float, ...]:
    """--network-delay-ms "0,1,3" -> (0.0, 1.0, 3.0)."""
    try:
        delays = tuple(float(d) for d in text.split(",") if d.strip())
    except ValueError:
        raise SplitspecError(
            f"--network-delay-ms takes comma-separated milliseconds (e.g. 0,1,3), got {text!r}"
        ) from None
    if not delays or min(delays) < 0:
        raise SplitspecError(f"--network-delay-ms needs delays >= 0, got {text!r}")
    return delays


def _levels(flag: str, text: str, kind: type) -> tuple:
    """--concurrency "1,4,16" -> (1, 4, 16): positive numbers."""
    try:
        levels = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SplitspecError(f"{flag} takes comma-separated positive numbers (e.g. 1,4,16), got {text!r}") from None
    if any(v <= 0 for v in levels):
        raise SplitspecError(f"{flag} takes positive numbers, got {text!r}")
    return levels


def _bench(args: argparse.Namespace) -> int:
    from splitspec.devices import resolve_device
    from splitspec.entrypoints.bench.run import BenchSettings, run_bench

    resolve_device(args.device)
    if args.num_requests < 1:
        raise SplitspecError(f"--num-requests must be >= 1, got {args.num_requests}")
    settings = BenchSettings(
        model=args.model,
        draft_model=args.draft_model,
        speculator=None if args.speculator == "none" else args.speculator,
        eagle3=None if args.eagle3 == "none" else args.eagle3,
        workloads=tuple(w for w in args.workloads.split(",") if w),
        prompts_per_workload=args.prompts_per_workload,
        max_tokens=args.max_tokens,
        num_speculative_tokens=args.num_speculative_tokens,
        concurrency=_levels("--concurrency", args.concurrency, int),
        request_rates=_levels("--request-rate", args.request_rate, float),
        num_requests=args.num_requests,
        gateway=not args.no_gateway,
        traced_gateway=args.traced_gateway,
        hf=not args.no_hf,
        seed=args.seed,
        output=args.output,
        device=args.device,
        enforce_eager=args.enforce_eager,
        eager_rows=args.eager_rows,
        remote_ngram_rows=args.remote_ngram_rows,
        unpipelined_rows=args.unpipelined_rows,
        direct_drafts_rows=args.direct_drafts_rows,
        network_delays_ms=_delays_ms(args.network_delay_ms),
        quantization=args.quantization,
        draft_quantization=args.draft_quantization,
        llama_cpp=args.llama_cpp,
    )
    if args.quick:
        settings = BenchSettings(
            **{
                **settings.__dict__,
                "workloads": ("code_edit", "summarise"),
                "prompts_per_workload": 1,
                "max_tokens": 32,
                "concurrency": (1, 4),
            }
        )
    run_bench(settings)
    return 0


def _add_train_speculator(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-speculator",
        help="train a speculator on text the target writes: an MLP speculator (IBM's published format) or an "
        "EAGLE-3 head (Red Hat's speculators format)",
    )
    p.add_argument("--model", default="default", help="the target checkpoint (Llama family)")
    p.add_argument(
        "--method",
        choices=("mlp_speculator", "eagle3"),
        default="mlp_speculator",
        help="mlp_speculator: heads fitted in closed form to the final state; eagle3: one layer over three "
        "layers' states, trained with training-time test",
    )
    p.add_argument("--output", help="where to save it (default: the cache, where `splitspec bench` looks)")
    p.add_argument(
        "--n-predict", type=int, default=2, help="MLP speculator: heads, i.e. the most tokens it drafts per round"
    )
    p.add_argument("--num-prompts", type=int, default=256, help="training prompts the target answers")
    p.add_argument("--max-tokens", type=int, default=256, help="tokens the target writes per training prompt")
    p.add_argument("--ridge", type=float, default=1e-3, help="MLP speculator: L2 penalty of the least-squares fit")
    p.add_argument(
        "--ttt-steps", type=int, default=4, help="EAGLE-3: training-time-test steps, the tokens it drafts per round"
    )
    p.add_argument("--epochs", type=int, default=6, help="EAGLE-3: passes over the training texts")
    p.add_argument(
        "--draft-vocab-size",
        type=int,
        default=8192,
        help="EAGLE-3: the tokens its head scores (those the target writes most)",
    )
    p.add_argument("--learning-rate", type=float, default=3e-4, help="EAGLE-3: AdamW's peak learning rate")
    p.add_argument(
        "--hard-labels",
        dest="distill",
        action="store_false",
        help="EAGLE-3: train on the tokens the target wrote; by default on its whole distribution at every "
        "position, prompts included (more signal from the same texts)",
    )
    p.add_argument("--seed", type=int, default=0, help="selects the prompts (the bench's held-out ones never train)")
    add_device_flag(p, "the target")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a small run: 8 prompts, 48 tokens, 1 epoch, served on 1 held-out prompt of each of the short "
        "workloads (humaneval, code_edit, chat)",
    )
    p.set_defaults(func=_train_speculator)


def _train_speculator(args: argparse.Namespace) -> int:
    import json

    from splitspec.entrypoints.train_speculator import TrainSpeculatorSettings, train_speculator

    settings = TrainSpeculatorSettings(
        model=args.model,
        output=args.output,
        method=args.method,
        n_predict=args.n_predict,
        num_prompts=8 if args.quick else args.num_prompts,
        max_tokens=48 if args.quick else args.max_tokens,
        ridge=args.ridge,
        ttt_steps=args.ttt_steps,
        epochs=1 if args.quick else args.epochs,
        draft_vocab_size=args.draft_vocab_size,
        learning_rate=args.learning_rate,
        distill=args.distill,
        held_out_per_workload=1 if args.quick else 3,
        held_out_workloads=("humaneval", "code_edit", "chat") if args.quick else None,
        seed=args.seed,
        device=args.device,
    )
    report = train_speculator(settings)
    print(json.dumps(report, indent=2))
    if not report["held_out_served_output_is_the_target_s"]:
        raise SplitspecError("serving with the new speculator changed the target's greedy output: that is a bug")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splitspec", description="Lossless speculative decoding")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_bench(sub)
    _add_train_speculator(sub)
    from splitspec.entrypoints.cli_services import add_service_commands

    add_service_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SplitspecError as exc:
        print(f"splitspec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("splitspec: interrupted", file=sys.stderr)
        return 130
