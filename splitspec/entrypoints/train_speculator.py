"""`splitspec train-speculator`: a speculator for a target, trained on text the target writes.

1. The target writes greedy continuations of training prompts (the bench's kinds of task over more of
   the standard library and HumanEval, never the bench's own prompts), with n-gram speculation to go
   faster (the tokens are the target's own either way).
2. One prefill pass per text gives the target's states at every position: the final one (MLP
   speculator) or the inputs of three decoder layers (EAGLE-3).
3. `--method mlp_speculator` fits the heads in closed form (proposer_svc/mlp_speculator_training.py),
   saved in IBM's published format; `--method eagle3` trains an EAGLE-3 head with training-time test
   (proposer_svc/eagle3_training.py), saved in Red Hat's speculators format.
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

METHODS = ("mlp_speculator", "eagle3")


@dataclass(frozen=True)
class TrainSpeculatorSettings:
    model: str = "default"
    output: str | None = None
    """Where the checkpoint goes; None: default_speculator_dir(model, method)."""
    method: str = "mlp_speculator"
    """"mlp_speculator" or "eagle3"."""
    n_predict: int = 2
    """MLP speculator: heads, i.e. the most tokens it drafts per round."""
    num_prompts: int = 256
    max_tokens: int = 256
    ridge: float = 1e-3
    """MLP speculator: the least-squares fit's L2 penalty."""
    ttt_steps: int = 4
    """EAGLE-3: training-time-test steps, the tokens it drafts per round."""
    epochs: int = 6
    """EAGLE-3: passes over the training texts."""
    draft_vocab_size: int = 8192
    """EAGLE-3: the target's tokens its head scores (the ones the target writes most)."""
    learning_rate: float = 3e-4
    """EAGLE-3: AdamW's peak learning rate."""
    distill: bool = True
    """EAGLE-3: train against the target's distribution at every position, prompts included
    (eagle3_training.TrainingSettings.distill); False: against the tokens it wrote."""
    held_out_per_workload: int = 3
    held_out_workloads: tuple[str, ...] | None = None
    """The bench workloads whose held-out prompts are served to report on the speculator; None: all.
    Every workload's held-out prompts stay out of training either way."""
    seed: int = 0
    device: str = "auto"


def default_speculator_dir(model: str, method: str = "mlp_speculator") -> Path:
    """The trained speculator for a target lives beside the converted default model in the cache."""
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


def _target_states(llm, tokens: list[int], seq_id: str, aux_layers: tuple[int, ...] = ()):
    """One prefill pass: [len(tokens) - 1, (len(aux_layers) + 1) * hidden] on the CPU; row j is the
    states of the position that produced tokens[j + 1] (the aux layers' inputs, then the final state)."""
    from splitspec.models.runner import ForwardInput

    try:
        inputs = [ForwardInput(seq_id, tokens[:-1], 1, len(tokens) - 1)]
        return llm.runner.forward_with_hidden(inputs, aux_layers=aux_layers)[1].cpu().float()
    finally:
        llm.runner.free(seq_id)


def _examples(llm, prompts: list[list[int]], outputs: list[list[int]], n_predict: int, desc: str):
    """One prefill pass per text; examples are the positions that produced the target's output (the
    prompts' own positions, text the target did not write, made the fit worse on held-out output)."""
    from proposer_svc.mlp_speculator_training import SpeculatorExamples

    parts = []
    progress = _progress(len(prompts), f"target states of {desc}", "text")
    for i, (prompt, output) in enumerate(zip(prompts, outputs)):
        tokens = prompt + output
        hidden = _target_states(llm, tokens, f"train-speculator-{i}")
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


@dataclass
class _TargetTexts:
    llm: object
    """The target, with n-gram speculation (it wrote the training texts)."""
    train_prompts: list[list[int]]
    train_outputs: list[list[int]]
    test_prompts: list[list[int]]
    test_outputs: list[list[int]]
    """The target's plain greedy decoding: the reference the served output is checked against."""


def _target_texts(settings: TrainSpeculatorSettings, path: Path) -> _TargetTexts:
    from splitspec import LLM
    from splitspec.config import DEFAULT_NUM_SPECULATIVE_TOKENS
    from splitspec.entrypoints.bench.workloads import WORKLOADS, build_prompts, training_prompts

    ngram = {"method": "ngram", "num_speculative_tokens": DEFAULT_NUM_SPECULATIVE_TOKENS}
    llm = LLM(str(path), speculative_config=ngram, device=settings.device)
    if getattr(llm.runner, "hidden", None) is None:
        raise SplitspecError("train-speculator needs a Llama-family target (one the native runner loads)")
    held_out = build_prompts(list(WORKLOADS), settings.held_out_per_workload, settings.seed)
    train_prompts = _chat_prompts(
        llm, training_prompts(settings.num_prompts, settings.seed, {p.name for p in held_out})
    )
    test_prompts = _chat_prompts(
        llm, [p for p in held_out if settings.held_out_workloads is None or p.workload in settings.held_out_workloads]
    )
    _log(
        f"the target writes {len(train_prompts)} training and {len(test_prompts)} held-out texts of up to {settings.max_tokens} tokens"
    )
    train_outputs = _generate(llm, train_prompts, settings.max_tokens)
    test_outputs = _generate(LLM(str(path), device=settings.device), test_prompts, settings.max_tokens)
    return _TargetTexts(llm, train_prompts, train_outputs, test_prompts, test_outputs)


def _serve(settings: TrainSpeculatorSettings, path: Path, speculator: dict, texts: _TargetTexts) -> dict:
    """The held-out prompts served greedily with the new speculator: tokens per round, and whether
    the output is the target's."""
    from splitspec import LLM
    from splitspec.sampling_params import SamplingParams

    _log("serving the held-out prompts with it (greedy)")
    served = LLM(str(path), speculative_config=speculator, device=settings.device)
    results = served.generate(
        [{"prompt_token_ids": p} for p in texts.test_prompts],
        SamplingParams(temperature=0, max_tokens=settings.max_tokens),
    )
    rounds = sum(r.spec_stats.num_rounds for r in results)
    accepted = sum(r.spec_stats.num_accepted_tokens for r in results)
    return {
        "held_out_served_mean_tokens_per_round": (accepted + rounds) / rounds if rounds else 0.0,
        "held_out_served_output_is_the_target_s": [r.outputs[0].token_ids for r in results] == texts.test_outputs,
    }


def train_speculator(settings: TrainSpeculatorSettings) -> dict:
    """Generate, train, save and measure; returns the report that is also written beside the checkpoint."""
    from splitspec.checkpoint import resolve_checkpoint
    from splitspec.devices import resolve_device

    if settings.method not in METHODS:
        raise SplitspecError(f"unknown method {settings.method!r}; choose from {', '.join(METHODS)}")
    drafts = settings.ttt_steps if settings.method == "eagle3" else settings.n_predict
    if drafts < 1 or settings.num_prompts < 1 or settings.max_tokens <= drafts:
        raise SplitspecError("need --n-predict/--ttt-steps >= 1, --num-prompts >= 1 and --max-tokens above them")
    if settings.method == "eagle3" and (settings.epochs < 1 or settings.draft_vocab_size < 1):
        raise SplitspecError("need --epochs >= 1 and --draft-vocab-size >= 1")
    resolve_device(settings.device)
    started = time.perf_counter()
    path = resolve_checkpoint(settings.model)
    output = Path(settings.output) if settings.output else default_speculator_dir(settings.model, settings.method)
    _log(f"target {settings.model} ({path}); the {settings.method} goes to {output}")
    texts = _target_texts(settings, path)
    train = _train_eagle3 if settings.method == "eagle3" else _train_mlp_speculator
    report = {
        "target": str(path),
        "checkpoint": str(output),
        "settings": asdict(settings),
        **train(settings, path, output, texts),
        "minutes": (time.perf_counter() - started) / 60,
    }
    (output / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _train_mlp_speculator(settings: TrainSpeculatorSettings, path: Path, output: Path, texts: _TargetTexts) -> dict:
    from proposer_svc.mlp_speculator import MLPSpeculator
    from proposer_svc.mlp_speculator_training import chain_agreement, fit_mlp_speculator, save_mlp_speculator
    from splitspec.checkpoint import read_embedding_and_head

    llm = texts.llm
    train = _examples(llm, texts.train_prompts, texts.train_outputs, settings.n_predict, "training texts")
    test = _examples(llm, texts.test_prompts, texts.test_outputs, settings.n_predict, "held-out texts")
    _log(f"fitting {settings.n_predict} heads to {len(train)} positions")
    embedding, head = read_embedding_and_head(path)
    config, tensors = fit_mlp_speculator(train, embedding, head, settings.n_predict, settings.ridge)
    save_mlp_speculator(output, config, tensors)
    _log(f"saved {output}")

    drafts = MLPSpeculator(output).greedy_drafts(test.hidden, test.tokens[:, 0], settings.n_predict)
    # K fixed: the report measures the speculator, not whether adaptive K finds drafting worth its cost here
    speculator = {"model": str(output), "num_speculative_tokens": settings.n_predict, "adaptive": False}
    return {
        "training_positions": len(train),
        "held_out_positions": len(test),
        "held_out_acceptance_per_position": chain_agreement(drafts, test.tokens[:, 1:]),
        **_serve(settings, path, speculator, texts),
    }


def _aux_texts(llm, prompts: list[list[int]], outputs: list[list[int]], aux_layers: tuple[int, ...], desc: str):
    """One prefill pass per text: the inputs of the aux layers and the final state at every position
    (the prompt's rows too, which the head attends to; only the output's rows are trained on)."""
    import torch

    from proposer_svc.eagle3_training import Text

    texts = []
    progress = _progress(len(prompts), f"target states of {desc}", "text")
    for i, (prompt, output) in enumerate(zip(prompts, outputs)):
        tokens = prompt + output
        states = _target_states(llm, tokens, f"train-speculator-{i}", aux_layers)
        width = states.shape[1] * len(aux_layers) // (len(aux_layers) + 1)
        texts.append(Text(states[:, :width].clone(), torch.tensor(tokens), len(prompt) - 1, states[:, width:].clone()))
        progress.update(1)
    progress.close()
    return texts


def _train_eagle3(settings: TrainSpeculatorSettings, path: Path, output: Path, texts: _TargetTexts) -> dict:
    import torch

    from proposer_svc.eagle3_training import (
        Eagle3Head,
        HeadShape,
        TrainingSettings,
        draft_vocabulary,
        eagle3_config,
        expected_tokens_per_pass,
        held_out_drafts,
        init_by_least_squares,
        init_from_target,
        read_target_tensors,
        save_eagle3,
        train,
    )
    from proposer_svc.mlp_speculator_training import chain_agreement
    from splitspec.checkpoint import read_embedding_and_head
    from splitspec.eagle3_checkpoint import default_aux_layers
    from splitspec.models.loader import load_config

    target = load_config(path)
    aux_layers = default_aux_layers(target.num_hidden_layers)
    training = _aux_texts(texts.llm, texts.train_prompts, texts.train_outputs, aux_layers, "training texts")
    held_out = _aux_texts(texts.llm, texts.test_prompts, texts.test_outputs, aux_layers, "held-out texts")
    draft_ids = draft_vocabulary(
        texts.train_outputs, texts.train_prompts, target.vocab_size, min(settings.draft_vocab_size, target.vocab_size)
    )
    shape = HeadShape.of_target(target, len(draft_ids))
    head = Eagle3Head(shape, draft_ids)
    embedding, lm_head = read_embedding_and_head(path)
    init_from_target(head, embedding, lm_head, read_target_tensors(path, ["model.norm.weight"])["model.norm.weight"])
    init_by_least_squares(head, training)

    positions = sum(len(t.ids) - 2 - t.first for t in training)
    _log(
        f"training on {positions} positions of {len(training)} texts, layers {list(aux_layers)}, {len(draft_ids)} draft tokens"
    )
    progress = _progress(
        settings.epochs * len(training), f"training the EAGLE-3 head ({settings.ttt_steps} steps)", "text"
    )

    def trained(loss: float) -> None:
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.2f}")

    run = TrainingSettings(
        steps=settings.ttt_steps,
        epochs=settings.epochs,
        lr=settings.learning_rate,
        seed=settings.seed,
        distill=settings.distill,
    )
    losses = train(head, training, run, trained)
    progress.close()
    config = eagle3_config(target, shape, aux_layers, settings.model, settings.ttt_steps, "float32")
    save_eagle3(output, head, config)
    _log(f"saved {output}")

    drafts, truths = zip(*(held_out_drafts(head, t, settings.ttt_steps) for t in held_out))
    acceptance = chain_agreement(torch.cat(drafts), torch.cat(truths))
    written = torch.tensor([t for o in texts.test_outputs for t in o])
    # K fixed: the report measures the head, not whether adaptive K finds drafting worth its cost here
    speculator = {
        "method": "eagle3",
        "model": str(output),
        "num_speculative_tokens": settings.ttt_steps,
        "adaptive": False,
    }
    return {
        "training_positions": positions,
        "held_out_positions": sum(len(d) for d in drafts),
        "aux_layers": list(aux_layers),
        "training_loss_per_epoch": losses,
        "held_out_tokens_in_draft_vocabulary": head.t2d[written].float().mean().item(),
        "held_out_acceptance_per_position": acceptance,
        "held_out_expected_tokens_per_pass": expected_tokens_per_pass(acceptance),
        **_serve(settings, path, speculator, texts),
    }
