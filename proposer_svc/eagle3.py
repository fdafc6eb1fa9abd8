"""EAGLE-3 drafters (Li et al. 2025, arXiv 2503.01840), from heads in either published layout
(splitspec/eagle3_checkpoint.py).

The target gives three states per position j: the inputs of three of its decoder layers, s_j [3 Ht].
At head position j the drafter reads the token x_{j+1} and g_j = fc(s_j); its one layer attends
over `cat(input_layernorm(embed(x_{j+1})), hidden_norm(g_j))` (2H wide) with g_j as the residual
(its norm when norm_before_residual), then a Llama MLP; `lm_head(norm(out))` scores the draft
vocabulary, and a draft id d becomes the target id d + d2t[d]. Later steps feed back `out` itself
(before the norm, without fc) beside the drafted token. As vLLM's llama_eagle3 and EAGLE's cnets;
docs/eagle3.md cites each step.
"""

from __future__ import annotations

from pathlib import Path

import torch

from proposer_svc.eagle import EagleProposer
from splitspec.eagle3_checkpoint import read_eagle3
from splitspec.models.linear import Linear
from splitspec.models.llama import DecoderLayer, LlamaRunner
from splitspec.models.runner import ForwardInput


class Eagle3Runner(LlamaRunner):
    """The head's one decoder layer on a paged KV cache; its input rows pair a token with a state."""

    def __init__(self, path: Path, target_path: Path, *, dtype: torch.dtype = torch.float32, **cache) -> None:
        head = read_eagle3(path, target_path)
        super().__init__(None, head.layer_config, weights=head.tensors, dtype=dtype, **cache)
        self.fc = Linear(head.fc.to(self.device, dtype))
        self.hidden_norm = head.hidden_norm.to(self.device, dtype)
        self.norm_before_residual = head.norm_before_residual
        self.draft_to_target = head.draft_to_target.to(self.device)
        self.aux_layers = head.aux_layers
        self.num_speculative_tokens = head.num_speculative_tokens

    def _input_embeddings(self, tokens: torch.Tensor, extra_input: torch.Tensor | None) -> torch.Tensor:
        """[tokens, 2H]: the raw embedding, then the state g; the layer norms each half itself."""
        return torch.cat((super()._input_embeddings(tokens, None), extra_input), dim=-1)

    def _layer_input(
        self, index: int, layer: DecoderLayer, x: torch.Tensor, delta: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embedded, state = x.split(self.hidden, dim=-1)
        normed_state = self.kernels.rms_norm(state, self.hidden_norm, self.eps)
        attention_input = torch.cat((self.kernels.rms_norm(embedded, layer.input_norm, self.eps), normed_state), -1)
        return (normed_state if self.norm_before_residual else state), attention_input

    def _final_hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The state fed back to the next step: the layer's output before the final norm."""
        return x

    def _lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return super()._lm_head(self.kernels.rms_norm(hidden, self.norm, self.eps))

    def scores(
        self, inputs: list[ForwardInput], states: torch.Tensor, from_target: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """states [sum(len(token_ids)), 3 Ht] from the target (fc applies), or [.., H] fed back
        (from_target False). -> (logits over the draft vocabulary, state to feed back) of each input's
        logit rows."""
        states = states.to(self.device, self.dtype)
        return self._forward(inputs, self.fc(states) if from_target else states)

    def step(
        self, inputs: list[ForwardInput], states: torch.Tensor, from_target: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(argmax target token, state to feed back) of each input's last row."""
        logits, fed_back = self.scores(inputs, states, from_target)
        return self.draft_to_target[logits.argmax(-1)].cpu(), fed_back

    def fed_back(self, states: torch.Tensor) -> torch.Tensor:
        """The target's states [n, 3 Ht] in the form a fed-back state takes: fc applied."""
        return self.fc(states.to(self.device, self.dtype))

    def token_ids(self) -> torch.Tensor:
        """The target token id of each draft-vocabulary column."""
        return self.draft_to_target.cpu()


class Eagle3Proposer(EagleProposer):
    """EagleProposer's drafting (argmax, one-hot q; catch-up over the committed rows) on an EAGLE-3
    head, reading the inputs of the target layers the head names."""

    method = "eagle3"

    def __init__(self, runner: Eagle3Runner) -> None:
        super().__init__(runner)
        self.hidden_layers = runner.aux_layers
