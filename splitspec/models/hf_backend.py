"""Generic transformers backend for causal LMs the native runner does not cover (OPT, GPT-2, ...).

Each sequence keeps its own transformers cache; rollback crops it. No paging, so sequences run one
at a time inside a batch: correct everywhere, fast nowhere.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from splitspec.models.runner import ForwardInput
from splitspec_kernels.dispatch import REFERENCE


class HFRunner:
    def __init__(
        self,
        path: Path,
        config,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_model_len: int | None = None,
    ) -> None:
        """Logits come back in float32, hidden states in the model's dtype, on the device."""
        from transformers import AutoModelForCausalLM

        self.device = torch.device(device)
        self.dtype = dtype
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(self.device).eval()
        self.kernels = REFERENCE  # attention is transformers' own; sampling uses the reference
        self.vocab_size = self.model.get_output_embeddings().weight.shape[0]
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048
        self.max_model_len = min(max_model_len or limit, limit)
        # newer transformers name the cache argument `cache`, older ones `past_key_values`
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._caches: dict[str, object] = {}
        self._lengths: dict[str, int] = {}

    def describe_kv_cache(self) -> str:
        return f"KV cache: transformers' own, one per sequence and unpaged, on {self.device}"

    def cached_length(self, seq_id: str) -> int:
        return self._lengths.get(seq_id, 0)

    def truncate(self, seq_id: str, length: int) -> None:
        current = self.cached_length(seq_id)
        if not 0 <= length <= current:
            raise ValueError(f"cannot truncate sequence {seq_id} of length {current} to {length}")
        if length == 0:
            self.free(seq_id)
            return
        self._caches[seq_id].crop(length - current)  # a negative count drops that many from the end
        self._lengths[seq_id] = length

    supports_trees = False  # transformers' causal cache: a verifier feeds a tree's main chain

    def keep_rows(self, seq_id: str, start: int, kept: list[int]) -> None:
        if kept != list(range(len(kept))):
            raise ValueError(f"sequence {seq_id}: this runner keeps a prefix of the rows fed, not rows {kept}")
        self.truncate(seq_id, start + len(kept))

    def free(self, seq_id: str) -> None:
        self._caches.pop(seq_id, None)
        self._lengths.pop(seq_id, None)

    def reuse_prefix(self, seq_id: str, token_ids: list[int]) -> int:
        """transformers' caches are one per sequence: nothing is shared."""
        return self.cached_length(seq_id)

    def cache_prefix(self, seq_id: str, token_ids: list[int]) -> None:
        pass

    def can_fit(self, inputs: list[ForwardInput]) -> bool:
        return True

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def forward(self, inputs: list[ForwardInput]) -> torch.Tensor:
        return self._forward(inputs, with_hidden=False)[0]

    def forward_with_hidden(
        self, inputs: list[ForwardInput], aux_layers: tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """aux_layers: as the native runner's (transformers' hidden_states[i] is the input of layer i)."""
        return self._forward(inputs, with_hidden=True, aux_layers=tuple(sorted(set(aux_layers))))

    @torch.inference_mode()
    def _forward(
        self, inputs: list[ForwardInput], with_hidden: bool, aux_layers: tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        from transformers import DynamicCache

        rows, hidden_rows = [], []
        for inp in inputs:
            start = self.cached_length(inp.seq_id)
            n = len(inp.token_ids)
            if start + n > self.max_model_len:
                raise ValueError(f"sequence {inp.seq_id} would exceed max_model_len={self.max_model_len}")
            cache = self._caches.get(inp.seq_id)
            if cache is None:
                cache = DynamicCache(config=self.model.config)
            positions = torch.arange(start, start + n, device=self.device)
            out = self.model(
                input_ids=torch.tensor([inp.token_ids], device=self.device),
                use_cache=True,
                position_ids=positions[None],
                cache_position=positions,
                logits_to_keep=inp.num_logits,
                output_hidden_states=with_hidden,
                **{self._cache_arg: cache},
            )
            self._caches[inp.seq_id] = cache
            self._lengths[inp.seq_id] = start + n
            rows.append(out.logits[0, -inp.num_logits :] if inp.num_logits else out.logits[0, :0])
            if with_hidden:  # the last entry is the final layer's output after the model's final norm
                states = torch.cat([out.hidden_states[i][0] for i in aux_layers] + [out.hidden_states[-1][0]], -1)
                hidden_rows.append(states[states.shape[0] - inp.hidden_rows :])
        hidden = torch.cat(hidden_rows) if with_hidden else None  # in the model's dtype, as the native runner's
        return torch.cat(rows).to(torch.float32), hidden
