"""`splitspec train-speculator`: an MLP speculator for a target, fitted to text the target writes.

1. The target writes greedy continuations of training prompts (the bench's kinds of task over more of
   the standard library and HumanEval, never the bench's own prompts), with n-gram speculation to go
   faster (the tokens are the target's own either way).
2. One prefill pass per text gives the target's final hidden state at every position.
3. The heads are fitted to those (proposer_svc/mlp_speculator_training.py) and saved in IBM's
   published format.
4. On the held-out prompts (the ones `splitspec bench` uses) it reports the acceptance per draft
   position on the target's own output, then serves those prompts in the engine, whose output must
   be the target's.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from splitspec.errors import SplitspecError


@dataclass(frozen=True)
class TrainSpeculatorSettings:
    model: str = "default"
    output: str | None = None
    """Where the checkpoint goes; None: default_speculator_dir(model)."""
    n_predict: int = 2
    num_prompts: int = 256
    max_tokens: int = 256
    ridge: float = 1e-3
    held_out_per_workload: int = 3
    seed: int = 0
    device: str = "auto"


def default_speculator_dir(model: str, method: str = "mlp_speculator") -> Path:
    """The trained speculator (an MLP speculator, or an EAGLE-3 head) for a target lives beside the
    converted default model in the cache."""
    from splitspec.checkpoint import DEFAULT_MODEL_ALIASES
    from splitspec.default_model import DEFAULT_MODEL_NAME, cache_root

    name = DEFAULT_MODEL_NAME if model in DEFAULT_MODEL_ALIASES else Path(model).name
    suffix = "eagle3" if method == "eagle3" else "mlp-speculator"
    return cache_root() / "speculators" / f"{name}-{suffix}"


def _log(message: str) -> None:
    print(f"train-speculator: {message}", file=sys.stderr, flush=True)


def _progress(total: int, desc: str, unit: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)


def _generate(llm, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    from splitspec.sampling_params import SamplingParams

    outputs = llm.generate(
        [{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=max_tokens)
    )
    return [o.outputs[0].token_ids for o in outputs]


def _examples(llm, prompts: list[list[int]], outputs: list[list[int]], n_predict: int, desc: str):
    """One prefill pass per text; examples are the positions that produced the target's output (the
    prompts' own positions, text the target did not write, made the fit worse on held-out output)."""
    from proposer_svc.mlp_speculator_training import SpeculatorExamples
    from splitspec.models.runner import ForwardInput

    parts = []
    progress = _progress(len(prompts), f"target states of {desc}", "text")
    for i, (prompt, output) in enumerate(zip(prompts, outputs)):
        tokens = prompt + output
        seq_id = f"train-speculator-{i}"
        try:
            hidden = llm.runner.forward_with_hidden([ForwardInput(seq_id, tokens[:-1], 1, len(tokens) - 1)])[1].cpu()
        finally:
            llm.runner.free(seq_id)
        parts.append(SpeculatorExamples.from_sequence(hidden, tokens, len(prompt) - 1, n_predict))
        progress.update(1)
    progress.close()
    return SpeculatorExamples.concat(parts)


def _chat_prompts(llm, prompts) -> list[list[int]]:
    tokenizer = llm.get_tokenizer()
    templated = getattr(tokenizer, "chat_template", None)
    return [
        tokenizer.encode(llm.apply_chat_template([{"role": "user", "content": p.text}]) if templated else p.text)
        for p in prompts
    ]


def train_speculator(settings: TrainSpeculatorSettings) -> dict:
    """Generate, fit, save and measure; returns the report that is also written beside the checkpoint."""
    from proposer_svc.mlp_speculator import MLPSpeculator
    from proposer_svc.mlp_speculator_training import chain_agreement, fit_mlp_speculator, save_mlp_speculator
    from splitspec import LLM
    from splitspec.checkpoint import read_embedding_and_head, resolve_checkpoint
    from splitspec.config import DEFAULT_NUM_SPECULATIVE_TOKENS
    from splitspec.devices import resolve_device
    from splitspec.entrypoints.bench.workloads import WORKLOADS, build_prompts, training_prompts
    from splitspec.sampling_params import SamplingParams

    if settings.n_predict < 1 or settings.num_prompts < 1 or settings.max_tokens <= settings.n_predict:
        raise SplitspecError("need --n-predict >= 1, --num-prompts >= 1 and --max-tokens > --n-predict")
    resolve_device(settings.device)
    started = time.perf_counter()
    path = resolve_checkpoint(settings.model)
    output = Path(settings.output) if settings.output else default_speculator_dir(settings.model)
    _log(f"target {settings.model} ({path}); the speculator goes to {output}")
    ngram = {"method": "ngram", "num_speculative_tokens": DEFAULT_NUM_SPECULATIVE_TOKENS}
    llm = LLM(str(path), speculative_config=ngram, device=settings.device)
    if getattr(llm.runner, "hidden", None) is None:
        raise SplitspecError("train-speculator needs a Llama-family target (one the native runner loads)")

    held_out = build_prompts(list(WORKLOADS), settings.held_out_per_workload, settings.seed)
    train_prompts = _chat_prompts(
        llm, training_prompts(settings.num_prompts, settings.seed, {p.name for p in held_out})
    )
    test_prompts = _chat_prompts(llm, held_out)
    _log(
        f"the target writes {len(train_prompts)} training and {len(test_prompts)} held-out texts of up to {settings.max_tokens} tokens"
    )
    train_outputs = _generate(llm, train_prompts, settings.max_tokens)
    # the held-out answers are also the reference the served output is checked against: plain decoding
    test_outputs = _generate(LLM(str(path), device=settings.device), test_prompts, settings.max_tokens)
    train = _examples(llm, train_prompts, train_outputs, settings.n_predict, "training texts")
    test = _examples(llm, test_prompts, test_outputs, settings.n_predict, "held-out texts")
    _log(f"fitting {settings.n_predict} heads to {len(train)} positions")
    embedding, head = read_embedding_and_head(path)
    config, tensors = fit_mlp_speculator(train, embedding, head, settings.n_predict, settings.ridge)
    save_mlp_speculator(output, config, tensors)
    _log(f"saved {output}")

    drafts = MLPSpeculator(output).greedy_drafts(test.hidden, test.tokens[:, 0], settings.n_predict)
    agreement = chain_agreement(drafts, test.tokens[:, 1:])
    _log("serving the held-out prompts with it (greedy)")
    # K fixed: the report measures the speculator, not whether adaptive K finds drafting worth its cost here
    speculator = {"model": str(output), "num_speculative_tokens": settings.n_predict, "adaptive": False}
    served = LLM(str(path), speculative_config=speculator, device=settings.device)
    results = served.generate(
        [{"prompt_token_ids": p} for p in test_prompts], SamplingParams(temperature=0, max_tokens=settings.max_tokens)
    )
    rounds = sum(r.spec_stats.num_rounds for r in results)
    accepted = sum(r.spec_stats.num_accepted_tokens for r in results)
    report = {
        "target": str(path),
        "checkpoint": str(output),
        "settings": asdict(settings),
        "training_positions": len(train),
        "held_out_positions": len(test),
        "held_out_acceptance_per_position": agreement,
        "held_out_served_mean_tokens_per_round": (accepted + rounds) / rounds if rounds else 0.0,
        "held_out_served_output_is_the_target_s": [r.outputs[0].token_ids for r in results] == test_outputs,
        "minutes": (time.perf_counter() - started) / 60,
    }
    (output / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
