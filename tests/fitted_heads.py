"""Drafting heads fitted to a tiny target, so that its verifier accepts their drafts often but not always.

A randomly initialised target writes text that no small head predicts in general: along its own
greedy text, a token is followed by its most common successor less than a tenth of the time. So each
head is fitted, in closed form, to the target's hidden states along the very text a test has it
write (greedy, or sampled with the test's seeds): it learns those states' transitions well enough to
draft runs of several right tokens, and not so well that every draft is right (a linear map in a
head's few weights, for transitions a two-layer transformer makes). Elsewhere its drafts rarely
pass: text sampled at a low temperature mostly follows the greedy text, at 0.8 it strays.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tiny_checkpoints import write_eagle

from proposer_svc.mlp_speculator_training import SpeculatorExamples, fit_mlp_speculator, save_mlp_speculator
from splitspec import LLM, SamplingParams
from splitspec.checkpoint import read_embedding_and_head
from splitspec.models.runner import ForwardInput


def target_texts(
    target: Path, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]
) -> list[tuple[int, list[int], torch.Tensor]]:
    """The target's continuation of each prompt: (prompt length, prompt + output, states), states
    [len(tokens) - 1, hidden] the target's final hidden states, row j the one that produced token j + 1."""
    llm = LLM(str(target))
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    texts = []
    for i, (prompt, out) in enumerate(zip(prompts, outputs)):
        tokens = prompt + out.outputs[0].token_ids
        states = llm.runner.forward_with_hidden([ForwardInput(f"fit-{i}", tokens[:-1], 1, len(tokens) - 1)])[1].cpu()
        llm.runner.free(f"fit-{i}")
        texts.append((len(prompt), tokens, states))
    return texts


def write_fitted_mlp_speculator(
    folder: Path,
    target: Path,
    prompts: list[list[int]],
    params: SamplingParams | list[SamplingParams],
    *,
    n_predict: int = 3,
) -> Path:
    """A tied speculator from proposer_svc/mlp_speculator_training.py's fit to the target's text for
    these requests, in IBM's format."""
    examples = SpeculatorExamples.concat(
        [
            SpeculatorExamples.from_sequence(states, tokens, prompt_len - 1, n_predict)
            for prompt_len, tokens, states in target_texts(target, prompts, params)
        ]
    )
    embedding, head = read_embedding_and_head(target)
    config, tensors = fit_mlp_speculator(examples, embedding, head, n_predict)
    save_mlp_speculator(folder, config, tensors)
    return folder


def write_fitted_eagle(
    folder: Path,
    target: Path,
    prompts: list[list[int]],
    params: SamplingParams | list[SamplingParams],
    *,
    ridge: float = 3e-3,
) -> Path:
    """An EAGLE head (proposer_svc/eagle.py) whose decoder layer passes its input through: attention and
    MLP add zeros to the residual stream, so the state it predicts is fc(concat(embed(x_{j+1}), f_j)).
    fc is the ridge regression of the target's next state f_{j+1} on that input, along the target's
    text for these requests; ridge: the L2 penalty per example."""
    embedding, _ = read_embedding_and_head(target)
    inputs, following = [], []
    for prompt_len, tokens, states in target_texts(target, prompts, params):
        j = torch.arange(prompt_len - 1, len(tokens) - 2)  # positions whose next state is known
        inputs.append(torch.cat([embedding[torch.tensor(tokens)[j + 1]], states[j], torch.ones(len(j), 1)], 1))
        following.append(states[j + 1])
    x = torch.cat(inputs).double()  # [N, 2 * hidden + 1]: embed(x_{j+1}) | f_j | 1
    y = torch.cat(following).double()  # [N, hidden]: f_{j+1}
    gram = x.T @ x + ridge * len(x) * torch.eye(x.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(gram, x.T @ y).T  # [hidden, 2 * hidden + 1]
    write_eagle(folder, hidden_size=y.shape[1], vocab_size=len(embedding), fc_bias=True)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["fc.weight"] = weights[:, :-1].float().contiguous()
    tensors["fc.bias"] = weights[:, -1].float().contiguous()
    for silenced in ("layers.0.self_attn.o_proj.weight", "layers.0.mlp.down_proj.weight"):
        tensors[silenced] = torch.zeros_like(tensors[silenced])
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def assert_drafts_pass_often_but_not_always(stats: list) -> None:
    """stats: per request, SpeculationStats from the engine or from the wire. Some drafts pass, some
    fail, and some round accepts two or more, so that losslessness is tested where it can break."""
    drafted = sum(s.num_draft_tokens for s in stats)
    accepted = sum(s.num_accepted_tokens for s in stats)
    assert 0 < accepted < drafted, f"{accepted} of {drafted} drafts accepted"
    assert any(len(s.accepted_per_position) > 1 and s.accepted_per_position[1] > 0 for s in stats), (
        f"no round accepted two drafts: {[list(s.accepted_per_position) for s in stats]}"
    )
