"""EAGLE drafters (Li et al. 2024, arXiv 2401.15077), read from published checkpoints as they are.

A checkpoint is a Llama config (usually one decoder layer) and weights (safetensors or
pytorch_model.bin) named fc.weight [hidden, 2 * hidden] (fc.bias optional), layers.{i}.* as in Llama
(the first layer without input_layernorm) and optionally embed_tokens.weight; names may carry a
"model." prefix. It has no output head: drafts are scored with the target's.

At position j the drafter reads fc(concat(embed(x_{j+1}), f_j)), where f_j is the target's final
hidden state at j (the one that produced x_{j+1}); its decoder runs causally over those inputs with
its own KV cache, and its last layer's output (no final norm) predicts f_{j+1}, so that the target's
head on it scores x_{j+2}. Drafting continues from predicted states: the next input pairs the drafted
token with the output that chose it. As in vLLM's llama_eagle.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from proposer_svc.proposer import Proposer
from proposer_svc.tree_expansion import TreeExpansion
from splitspec.checkpoint import read_embedding_and_head, read_tensors
from splitspec.config import is_eagle3_dir
from splitspec.draft_tree import ROOT
from splitspec.drafts import Draft, DraftRequest, HiddenStates
from splitspec.errors import SplitspecError
from splitspec.models.linear import Linear
from splitspec.models.llama import LlamaRunner
from splitspec.models.loader import load_config
from splitspec.models.runner import ForwardInput

if TYPE_CHECKING:
    from proposer_svc.eagle3 import Eagle3Runner


class EagleRunner(LlamaRunner):
    """The drafter's decoder on a paged KV cache; its input rows are (token, target state) pairs."""

    def __init__(self, path: Path, target_path: Path, *, dtype: torch.dtype = torch.float32, **cache) -> None:
        if is_eagle3_dir(path):
            raise SplitspecError(f"{path} is an EAGLE-3 head: use method 'eagle3' (or give only 'model')")
        config = load_config(path)
        weights = {name.removeprefix("model."): t for name, t in read_tensors(path).items()}
        if "fc.weight" not in weights:
            raise SplitspecError(f"{path} has no fc.weight: it is not an EAGLE head")
        embedding, head = read_embedding_and_head(target_path)
        if head.shape[1] != config.hidden_size:
            raise SplitspecError(
                f"EAGLE head {path} has hidden size {config.hidden_size}, the target {target_path} has {head.shape[1]}: "
                "it was trained for another model"
            )
        fc_weight, fc_bias = weights.pop("fc.weight"), weights.pop("fc.bias", None)
        tensors = {f"model.{name}": t for name, t in weights.items() if name.startswith("layers.")}
        tensors["model.embed_tokens.weight"] = weights.get("embed_tokens.weight", embedding)
        tensors["model.norm.weight"] = torch.ones(config.hidden_size)  # unused: see _final_hidden
        tensors["lm_head.weight"] = head
        config.tie_word_embeddings = False
        config.vocab_size = head.shape[0]
        super().__init__(None, config, weights=tensors, dtype=dtype, **cache)
        self.fc = Linear(fc_weight.to(self.device, dtype), None if fc_bias is None else fc_bias.to(self.device, dtype))

    def _input_norm(self, w: dict[str, torch.Tensor], prefix: str, index: int) -> torch.Tensor | None:
        if index == 0:
            return w.pop(prefix + "input_layernorm.weight", None)
        return super()._input_norm(w, prefix, index)

    def _input_embeddings(self, tokens: torch.Tensor, extra_input: torch.Tensor | None) -> torch.Tensor:
        return self.fc(torch.cat((super()._input_embeddings(tokens, None), extra_input.to(self.dtype)), dim=-1))

    def _final_hidden(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def scores(
        self, inputs: list[ForwardInput], states: torch.Tensor, from_target: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """states [sum(len(token_ids)), hidden]: the state paired with each fed token, the target's or
        (from_target False) one this runner predicted; both are read alike. -> (logits, predicted next
        state) of each input's logit rows."""
        return self._forward(inputs, states.to(self.device))

    def step(
        self, inputs: list[ForwardInput], states: torch.Tensor, from_target: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(argmax token, predicted next state) of each input's last row."""
        logits, predicted = self.scores(inputs, states, from_target)
        return logits.argmax(-1).cpu(), predicted

    def fed_back(self, states: torch.Tensor) -> torch.Tensor:
        """The target's states in the form a predicted one is fed (from_target False): the same here."""
        return states.to(self.device)

    def token_ids(self) -> torch.Tensor:
        """The target token id of each logit column: the target's own vocabulary."""
        return torch.arange(self.vocab_size)


class EagleProposer(Proposer):
    """Argmax drafts (one-hot q). Each request brings the target's states behind the tokens committed
    since the last one; the drafter feeds them, then drafts from its own predicted states. A
    sequence whose states have a gap (a proposer that missed a step) gets no drafts rather than
    drafts from garbage, until the verifier resends them all (a re-prefill).

    A request with tree_width > 1 gets EAGLE-2's dynamic tree (proposer_svc.tree_expansion), greedy or
    sampled (its siblings are one-hot, as its chains are): each expansion is one tree pass over the last
    true input and the paths to the nodes it expands, every node paired with the state its parent
    predicted; the cache is then cut back to the true inputs."""

    method = "eagle"
    hidden_states = HiddenStates.ALL

    def __init__(self, runner: EagleRunner | Eagle3Runner) -> None:
        self.runner = runner
        self._fed: dict[str, int] = {}  # positions 0..fed-1 of a sequence's cache hold true inputs

    def propose(self, requests: list[DraftRequest]) -> list[Draft]:
        drafts = [Draft() for _ in requests]
        new = [(i, caught) for i, r in enumerate(requests) if (caught := self._catch_up(r)) is not None]
        if not new:
            return drafts
        inputs = [inp for _, (inp, _) in new]
        if not self.runner.can_fit(inputs):
            for inp in inputs:  # no room: these sequences start over when the verifier resends their states
                self.release(inp.seq_id)
            return drafts
        true_rows = [rows for _, (_, rows) in new]
        logits, states = self.runner.scores(inputs, torch.cat(true_rows), from_target=True)
        tokens = self.runner.token_ids()[logits.argmax(-1).cpu()]
        chains = [[t] for t in tokens.tolist()]
        wanted = [requests[i].num_tokens for i, _ in new]
        trees = [a for a, (i, _) in enumerate(new) if requests[i].tree_width > 1 and self.runner.supports_trees]
        grown = self._trees(
            [requests[new[a][0]] for a in trees],
            [inputs[a].token_ids[-1] for a in trees],
            [true_rows[a][-1:] for a in trees],
            [logits[a] for a in trees],
            [states[a] for a in trees],
        )
        for a, tree in zip(trees, grown):
            drafts[new[a][0]] = tree
            wanted[a] = 0
        for step in range(1, max(wanted)):
            active = [a for a, k in enumerate(wanted) if k > step]
            step_inputs = [ForwardInput(inputs[a].seq_id, [chains[a][-1]], 1) for a in active]
            if not active or not self.runner.can_fit(step_inputs):
                break
            rows = torch.tensor(active)
            tokens, predicted = self.runner.step(step_inputs, states[rows], from_target=False)
            states = states.index_copy(0, rows.to(states.device), predicted)
            for a, t in zip(active, tokens.tolist()):
                chains[a].append(t)
        for (i, _), chain, k in zip(new, chains, wanted):
            if k > 0:
                drafts[i] = Draft(chain[:k], [None] * min(k, len(chain)))
        return drafts

    def _trees(
        self,
        requests: list[DraftRequest],
        last_tokens: list[int],
        last_states: list[torch.Tensor],
        logits: list[torch.Tensor],
        predicted: list[torch.Tensor],
    ) -> list[Draft]:
        """Each request's tree, from the drafter's scores after its last true input (its last token
        paired with its last state, the target's) and the state that input predicted; every tree that
        grows a level does so in one tree pass of the head."""
        if not requests:
            return []
        vocab = self.runner.token_ids()
        cached = [self.runner.cached_length(r.seq_id) for r in requests]
        last_inputs = [self.runner.fed_back(state) for state in last_states]
        trees = [
            TreeExpansion(r.num_tokens, r.tree_width, self.runner.max_model_len - len(r.token_ids)) for r in requests
        ]
        outputs = [{ROOT: p} for p in predicted]  # node -> the state it predicted, which its children are fed
        for tree, row in zip(trees, logits):
            tree.expand(ROOT, torch.softmax(row.float().cpu(), -1), vocab=vocab)
        while True:
            frontiers = [tree.frontier() for tree in trees]
            growing = [t for t, frontier in enumerate(frontiers) if frontier]
            fed = {t: trees[t].path_nodes(frontiers[t]) for t in growing}
            step = [
                ForwardInput(
                    requests[t].seq_id,
                    [last_tokens[t], *trees[t].tokens_of(fed[t])],
                    len(frontiers[t]),
                    tree=trees[t].parents_within(fed[t]),
                )
                for t in growing
            ]
            if not growing or not self.runner.can_fit(step):  # asked with the last true inputs held: a row to spare
                break
            for t in growing:  # the last true input is fed again, as the tree's root
                self.runner.truncate(requests[t].seq_id, cached[t] - 1)
            states = torch.cat(
                [
                    torch.cat([last_inputs[t], torch.stack([outputs[t][trees[t].nodes[n].parent] for n in fed[t]])])
                    for t in growing
                ]
            )
            step_logits, step_predicted = self.runner.scores(step, states, from_target=False)
            row = 0
            for t in growing:
                self.runner.truncate(requests[t].seq_id, cached[t])
                for node in frontiers[t]:
                    outputs[t][node] = step_predicted[row]
                    trees[t].expand(node, torch.softmax(step_logits[row].float().cpu(), -1), vocab=vocab)
                    row += 1
        return [tree.draft() for tree in trees]

    def _catch_up(self, r: DraftRequest) -> tuple[ForwardInput, torch.Tensor] | None:
        """The true (token, state) inputs this request adds, after cutting the cache back to the
        positions known to be true; None when there is nothing to feed or the states have a gap."""
        positions = len(r.token_ids) - 1  # each committed token but the first has a state behind it
        if r.hidden_state is None or r.hidden_state.dim() != 2 or len(r.hidden_state) == 0 or positions < 1:
            return None
        rows = r.hidden_state[-positions:]  # more rows than positions: a resend after rows never delivered
        start = positions - len(rows)  # the first position the rows belong to
        if start > self._fed.get(r.seq_id, 0):
            self.release(r.seq_id)  # a gap: wait for the verifier to resend everything
            return None
        if self.runner.cached_length(r.seq_id) > start:
            self.runner.truncate(r.seq_id, start)
        self._fed[r.seq_id] = positions
        return ForwardInput(r.seq_id, r.token_ids[start + 1 :], 1), rows

    def release(self, seq_id: str) -> None:
        self._fed.pop(seq_id, None)
        self.runner.free(seq_id)
