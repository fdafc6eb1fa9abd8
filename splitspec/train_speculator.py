"""`splitspec train-speculator`: an MLP speculator for a target, trained on text the target generates.

1. The target generates greedy continuations of training prompts (the bench's kinds of task over more
   of the standard library and HumanEval, never the bench's own prompts), with n-gram speculation to
   go faster (the tokens are the target's own either way).
2. One prefill pass per text gives the target's final hidden state at every position.
3. The speculator's heads are trained on those (see proposer_svc/mlp_speculator_training.py), started
   from the target's embedding and output head.
4. It is saved in IBM's published format, then measured on the held-out prompts (the ones `splitspec
   bench` uses): teacher-forced accuracy per head, and the speculator serving those prompts in the
   engine, whose output must equal the target's.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from splitspec.errors import SplitspecError


@dataclass(frozen=True)
class TrainSpeculatorSettings:
    model: str = "default"
    output: str | None = None
    """Where the checkpoint goes; None: default_speculator_dir(model)."""
    n_predict: int = 3
    tie_weights: bool = True
    scale_input: bool = True
    num_prompts: int = 96
    max_tokens: int = 256
    epochs: int = 3
    batch_size: int = 128
    learning_rate: float = 1e-3
    held_out_per_workload: int = 3
    seed: int = 0


def default_speculator_dir(model: str) -> Path:
    """The trained speculator for a target lives beside the converted default model in the cache."""
    from splitspec.checkpoint import DEFAULT_MODEL_ALIASES
    from splitspec.default_model import DEFAULT_MODEL_NAME, cache_root

    name = DEFAULT_MODEL_NAME if model in DEFAULT_MODEL_ALIASES else Path(model).name
    return cache_root() / "speculators" / f"{name}-mlp-speculator"


def _log(message: str) -> None:
    print(f"train-speculator: {message}", file=sys.stderr, flush=True)


def _progress(total: int, desc: str, unit: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)


def _generate(llm, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    from splitspec.sampling_params import SamplingParams

    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=max_tokens))
    return [o.outputs[0].token_ids for o in outputs]


def _examples(llm, prompts: list[list[int]], outputs: list[list[int]], n_predict: int, desc: str):
    """One prefill pass per text: the hidden state at every position from the last prompt token on."""
    from proposer_svc.mlp_speculator_training import SpeculatorExamples
    from splitspec.models.runner import ForwardInput

    parts = []
    progress = _progress(len(prompts), desc, "text")
    for i, (prompt, output) in enumerate(zip(prompts, outputs)):
        tokens = prompt + output
        seq_id = f"train-speculator-{desc}-{i}"
        try:
            _, hidden = llm.runner.forward_with_hidden([ForwardInput(seq_id, tokens[:-1], len(tokens) - 1)])
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
    """Train, save and measure; returns the report that is also written beside the checkpoint."""
    from proposer_svc.mlp_speculator import MLPSpeculatorConfig
    from proposer_svc.mlp_speculator_training import (
        TrainableMLPSpeculator,
        TrainingSettings,
        evaluate,
        save_mlp_speculator,
        train,
    )
    from splitspec import LLM
    from splitspec.bench.workloads import WORKLOADS, build_prompts, training_prompts
    from splitspec.checkpoint import read_embedding_and_head, resolve_checkpoint
    from splitspec.config import DEFAULT_NUM_SPECULATIVE_TOKENS

    if settings.n_predict < 1 or settings.num_prompts < 1 or settings.max_tokens <= settings.n_predict or settings.epochs < 1:
        raise SplitspecError("need n_predict >= 1, num_prompts >= 1, epochs >= 1 and max_tokens > n_predict")
    started = time.perf_counter()
    path = resolve_checkpoint(settings.model)
    output = Path(settings.output) if settings.output else default_speculator_dir(settings.model)
    _log(f"target {settings.model} ({path}); checkpoint will be written to {output}")
    llm = LLM(str(path), speculative_config={"method": "ngram", "num_speculative_tokens": DEFAULT_NUM_SPECULATIVE_TOKENS})
    hidden_size = getattr(llm.runner, "hidden", None)
    if hidden_size is None:
        raise SplitspecError("train-speculator needs a target the native Llama-family runner loads")

    held_out = build_prompts(list(WORKLOADS), settings.held_out_per_workload, settings.seed)
    train_prompts = _chat_prompts(llm, training_prompts(settings.num_prompts, settings.seed, {p.name for p in held_out}))
    test_prompts = _chat_prompts(llm, held_out)
    _log(f"generating {len(train_prompts)} training and {len(test_prompts)} held-out texts of up to {settings.max_tokens} tokens")
    train_outputs = _generate(llm, train_prompts, settings.max_tokens)
    test_outputs = _generate(llm, test_prompts, settings.max_tokens)
    train_examples = _examples(llm, train_prompts, train_outputs, settings.n_predict, "train")
    test_examples = _examples(llm, test_prompts, test_outputs, settings.n_predict, "held-out")
    _log(f"{len(train_examples)} training positions, {len(test_examples)} held-out positions")

    config = MLPSpeculatorConfig(
        emb_dim=hidden_size,
        inner_dim=hidden_size,
        vocab_size=llm.runner.vocab_size,
        n_predict=settings.n_predict,
        tie_weights=settings.tie_weights,
        scale_input=settings.scale_input,
    )
    embedding, head = read_embedding_and_head(path)
    model = TrainableMLPSpeculator(config, embedding, head, seed=settings.seed)
    before = evaluate(model, test_examples)
    training = TrainingSettings(
        epochs=settings.epochs, batch_size=settings.batch_size, learning_rate=settings.learning_rate, seed=settings.seed
    )
    progress = _progress(1, "training", "step")

    def on_step(step: int, total: int, loss: float) -> None:
        progress.total = total
        progress.set_postfix(loss=f"{loss:.3f}", refresh=False)
        progress.update(1)

    train(model, train_examples, training, on_step)
    progress.close()
    after = evaluate(model, test_examples)
    save_mlp_speculator(output, model)
    _log(f"saved {output}")

    _log("serving the held-out prompts with the trained speculator")
    served = LLM(str(path), speculative_config={"model": str(output), "num_speculative_tokens": settings.n_predict})
    from splitspec.sampling_params import SamplingParams

    results = served.generate(
        [{"prompt_token_ids": p} for p in test_prompts], SamplingParams(temperature=0, max_tokens=settings.max_tokens)
    )
    rounds = sum(r.spec_stats.num_rounds for r in results)
    drafted = [0] * settings.n_predict
    accepted = [0] * settings.n_predict
    for r in results:
        for i, (d, a) in enumerate(zip(r.spec_stats.drafted_per_position, r.spec_stats.accepted_per_position)):
            drafted[i] += d
            accepted[i] += a
    emitted = sum(len(r.outputs[0].token_ids) for r in results)
    report = {
        "target": str(path),
        "checkpoint": str(output),
        "settings": asdict(settings),
        "training_positions": len(train_examples),
        "held_out_positions": len(test_examples),
        "held_out_top1_per_head_before": before.accuracy,
        "held_out_top1_per_head_after": after.accuracy,
        "held_out_loss_per_head_after": after.loss,
        "held_out_mean_tokens_per_round": emitted / rounds if rounds else 0.0,
        "held_out_acceptance_per_position": [a / d if d else 0.0 for a, d in zip(accepted, drafted)],
        "held_out_output_equals_target": [r.outputs[0].token_ids for r in results] == test_outputs,
        "minutes": (time.perf_counter() - started) / 60,
    }
    (output / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
