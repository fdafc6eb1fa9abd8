"""Native runner for the Llama family (Llama 2/3.x, Mistral, Qwen2/2.5, Qwen3, Granite, SmolLM).

Weights come straight from the checkpoint's safetensors; attention reads and writes a paged KV cache,
so a sequence's rejected positions are rolled back by shortening it.
"""

from __future__ import annotations

import gc
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

from splitspec import draft_tree
from splitspec.config import QUANTIZATIONS
from splitspec.devices import to_device
from splitspec.errors import OutOfKVBlocks, SplitspecError
from splitspec.models.block_allocator import BlockAllocator
from splitspec.models.cuda_graphs import PassGraphs
from splitspec.models.gguf_weights import Int4Blocks, gguf_file_of, read_int4_blocks
from splitspec.models.kv_budget import CPU_KV_CACHE_BYTES, kv_cache_budget, profile_inputs, sampling_workspace_bytes
from splitspec.models.linear import Linear
from splitspec.models.pass_layout import PassLayout
from splitspec.models.quantized_linear import Fp8Linear, Int4Linear, Int8Linear, quantize_linear
from splitspec.models.rope import NATIVE_ROPE_TYPES, inverse_frequencies, rope_parameters
from splitspec.models.runner import ForwardInput
from splitspec.models.tensor_parallel import ShardPlan, TensorParallel, all_reduce, embed, gather_logits, min_over_ranks
from splitspec.models.tp_workers import TensorParallelWorkerLost, WorkerGroup, broadcast_layout
from splitspec_kernels.dispatch import KernelUnavailable, select_kernels
from splitspec_kernels.paged_attention import AttentionBatch, paged_attention_rowwise
from splitspec_kernels.rms_norm import rms_norm_reference
from splitspec_kernels.rotary import rotate_half

NATIVE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "granite")


def supports_natively(config) -> bool:
    return (
        config.model_type in NATIVE_MODEL_TYPES
        and rope_parameters(config)["rope_type"] in NATIVE_ROPE_TYPES
        and getattr(config, "hidden_act", "silu") == "silu"
    )


Projection = Linear | Int8Linear | Int4Linear | Fp8Linear


def _gguf_blocks(
    path: Path | None, config, quantization: str | None, device: torch.device, tp: TensorParallel | None
) -> dict[str, Int4Blocks]:
    """Check the quantization fits this runner; for "gguf", the 4-bit blocks of the checkpoint's GGUF."""
    if quantization is None:
        return {}
    if quantization not in QUANTIZATIONS:
        raise SplitspecError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    if tp is not None:
        raise SplitspecError("quantized weights run on one device: drop tensor_parallel_size or quantization")
    if quantization in ("int4", "gguf") and device.type != "cpu":
        raise SplitspecError(f'quantization="{quantization}" runs on the CPU; on {device} use "fp8" or "int8"')
    if quantization != "gguf":
        return {}
    if path is None:
        raise SplitspecError('quantization="gguf" needs a checkpoint converted from a GGUF file')
    return read_int4_blocks(gguf_file_of(path), config)


@dataclass
class DecoderLayer:
    input_norm: torch.Tensor | None  # [hidden]; None in an EAGLE drafter's first layer
    qkv: Projection  # hidden -> (q_heads + 2 * kv_heads) * head_dim
    q_norm: torch.Tensor | None  # [head_dim] (Qwen3)
    k_norm: torch.Tensor | None
    o: Projection  # q_heads * head_dim -> hidden
    post_norm: torch.Tensor  # [hidden]
    gate_up: Projection  # hidden -> 2 * intermediate
    down: Projection  # intermediate -> hidden


def _read_safetensors(path: Path, dtype: torch.dtype, plan: ShardPlan | None = None) -> dict[str, torch.Tensor]:
    """Every tensor, or with a plan only this rank's part of each (the rest is never read)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        raise SplitspecError(f"{path} has no *.safetensors weights; only safetensors checkpoints are supported")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(str(path / name), framework="pt") as f:
            for key in f.keys():
                tensor = f.get_tensor(key) if plan is None else plan.take(key, f.get_slice(key))
                tensors[key] = tensor.to(dtype)
    return tensors


class LlamaRunner:
    def __init__(
        self,
        path: Path | None,
        config,
        *,
        weights: dict[str, torch.Tensor] | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        block_size: int = 16,
        kv_cache_memory_bytes: int | None = None,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        max_num_seqs: int = 64,
        kernel_backend: str = "auto",
        tp: TensorParallel | None = None,
        enforce_eager: bool = False,
        quantization: str | None = None,
        prefix_caching: bool = False,
    ) -> None:
        """Weights come from the safetensors under `path`, or from `weights` (checkpoint names and
        layout) when given. kv_cache_memory_bytes None: on CUDA, what gpu_memory_utilization leaves
        after the weights and a profiling pass (splitspec.models.kv_budget); on the CPU, 1 GiB.
        kernel_backend: "auto" (Triton on CUDA, PyTorch elsewhere), "torch" or
        "triton". Logits and hidden states stay on the device.
        tp: this process's rank in a tensor-parallel group; it then holds its shard of every weight
        and of the KV heads (splitspec.models.tensor_parallel).
        enforce_eager: never replay CUDA graphs. Otherwise decode and verify passes on CUDA with the Triton
        kernels and one process are captured and replayed (splitspec.models.cuda_graphs).
        quantization: None, or how the projections' weights are held (splitspec.models.quantized_linear:
        "int8", "int4", "fp8", or "gguf" for the 4-bit blocks of the GGUF file the checkpoint came from).
        prefix_caching: full blocks of committed tokens stay for later sequences (reuse_prefix)."""
        self.config = config
        self.device = torch.device(device)
        try:
            self.kernels = select_kernels(kernel_backend, self.device)
        except KernelUnavailable as exc:
            raise SplitspecError(str(exc)) from None
        self.dtype = dtype
        self.tp = tp
        self.quantization = quantization
        self._gguf_blocks = _gguf_blocks(path, config, quantization, self.device, tp)
        # a quantized target rounds activations to bfloat16, which turns SDPA's last-bit differences
        # between passes of different shapes into different tokens at near-ties: attend the same in every pass
        rowwise = quantization is not None and self.device.type == "cpu"
        self._attention = paged_attention_rowwise if rowwise else self.kernels.paged_attention
        # a tree's tokens lie at other slots than a decode step's, so row-by-row attention would not be
        # exact across passes for them; the tensor-parallel ranks do not move KV (keep_rows)
        self.supports_trees = not rowwise and tp is None
        self.workers: WorkerGroup | None = None  # the driver's; set by the loader
        self.hidden = config.hidden_size
        self.q_heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.q_heads
        self.head_dim = getattr(config, "head_dim", None) or self.hidden // self.q_heads
        plan = ShardPlan(config, tp) if tp is not None else None
        self.vocab_shard = plan.vocab if plan is not None else (0, config.vocab_size)
        if plan is not None:
            self.q_heads, self.kv_heads = plan.q_heads, plan.kv_heads
        self.eps = config.rms_norm_eps
        self.vocab_size = config.vocab_size
        limit = getattr(config, "max_position_embeddings", None) or 4096
        self.max_model_len = min(max_model_len or limit, limit)
        self.embedding_multiplier = float(getattr(config, "embedding_multiplier", 1.0) or 1.0)
        self.residual_multiplier = float(getattr(config, "residual_multiplier", 1.0) or 1.0)
        self.logits_scaling = float(getattr(config, "logits_scaling", 1.0) or 1.0)
        granite_scale = getattr(config, "attention_multiplier", None) if config.model_type == "granite" else None
        self.attn_scale = float(granite_scale) if granite_scale else 1.0 / math.sqrt(self.head_dim)
        window = getattr(config, "sliding_window", None)
        uses_window = config.model_type == "mistral" or getattr(config, "use_sliding_window", False)
        self.sliding_window = window if (window and uses_window and window < self.max_model_len) else None

        if weights is None:
            weights = _read_safetensors(path, dtype, plan)
        elif plan is not None:
            weights = {name: plan.take(name, w) for name, w in weights.items()}
        self._load({name: w.to(self.device, dtype) for name, w in weights.items()}, config)
        inv_freq, self.rope_attention_factor = inverse_frequencies(rope_parameters(config), self.head_dim)
        self.inv_freq = inv_freq.to(self.device)  # [head_dim / 2]

        self.graphs: PassGraphs | None = None  # set once the KV cache is allocated
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.bytes_per_block = (
            config.num_hidden_layers * 2 * block_size * self.kv_heads * self.head_dim * torch.finfo(dtype).bits // 8
        )
        if kv_cache_memory_bytes is None:
            kv_cache_memory_bytes = (
                self._profiled_kv_budget(gpu_memory_utilization, max_num_seqs)
                if self.device.type == "cuda"
                else CPU_KV_CACHE_BYTES
            )
        # never more than max_num_seqs full-length sequences can use
        blocks_per_seq = -(-self.max_model_len // block_size)
        num_blocks = max(1, min(kv_cache_memory_bytes // self.bytes_per_block, max_num_seqs * blocks_per_seq))
        if tp is not None:  # the driver's allocator decides for all: every rank needs as many blocks
            num_blocks = min_over_ranks(num_blocks, self.device)
        self._allocate_kv_cache(num_blocks)
        if self.device.type == "cuda" and self.kernels.name == "triton" and tp is None and not enforce_eager:
            self.graphs = self.pass_graphs(capture=True)

    def pass_graphs(self, *, capture: bool) -> PassGraphs:
        """This runner's short passes as graphs (capture=False: padded like them, run eagerly)."""
        return PassGraphs(
            self._all_rows,
            max_blocks=-(-self.max_model_len // self.block_size),
            scratch_slot=self.allocator.num_blocks * self.block_size,
            sliding_window=self.sliding_window,
            device=self.device,
            capture=capture,
        )

    def _allocate_kv_cache(self, num_blocks: int) -> None:
        self.allocator = BlockAllocator(num_blocks, self.block_size, self.prefix_caching)
        self.kv_cache_bytes = num_blocks * self.bytes_per_block
        # one block more than the allocator hands out: the scratch block padded graph passes write to
        shape = (num_blocks + 1, self.block_size, self.kv_heads, self.head_dim)
        self.key_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.value_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]

    def profile_pass(self, max_num_seqs: int) -> int:
        """Run the largest pass the limits allow (kv_budget.profile_inputs) and hold the sampler's
        workspace, in a KV cache made for it and dropped after; the runner's own cache is untouched.
        -> the peak bytes the pass allocated beyond that cache (0 on the CPU, which does not count)."""
        inputs = profile_inputs(self.max_model_len, max_num_seqs)
        saved = {
            name: getattr(self, name, None) for name in ("allocator", "kv_cache_bytes", "key_cache", "value_cache")
        }
        counts = self.device.type == "cuda"
        try:
            self._allocate_kv_cache(sum(-(-len(i.token_ids) // self.block_size) for i in inputs))
            if counts:
                torch.cuda.synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
                base = torch.cuda.memory_allocated(self.device)
            logits, _ = self.compute(self._layout(inputs))
            workspace = torch.empty(
                sampling_workspace_bytes(inputs, self.vocab_size), dtype=torch.uint8, device=self.device
            )
            del logits, workspace
            if not counts:
                return 0
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - base
        finally:
            for name, value in saved.items():
                setattr(self, name, value)

    def _profiled_kv_budget(self, utilization: float, max_num_seqs: int) -> int:
        activation_peak = self.profile_pass(max_num_seqs)
        gc.collect()  # models dropped but not yet collected (reference cycles) hold memory no one uses
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        return kv_cache_budget(
            total=total,
            utilization=utilization,
            in_use=total - free,
            activation_peak=activation_peak,
            bytes_per_block=self.bytes_per_block,
        )

    def describe_kv_cache(self) -> str:
        """What the KV cache holds, for start-up logs."""
        blocks, size = self.allocator.num_blocks, self.allocator.block_size
        return (
            f"KV cache: {blocks} blocks of {size} tokens ({blocks * size} tokens, "
            f"{self.kv_cache_bytes / (1 << 20):.0f} MiB of {str(self.dtype).removeprefix('torch.')}) on {self.device}"
        )

    def _load(self, w: dict[str, torch.Tensor], config) -> None:
        def take(name: str) -> torch.Tensor:
            if name not in w:
                raise SplitspecError(f"checkpoint is missing tensor {name!r}; is it a {config.model_type} model?")
            return w.pop(name)

        self.embed = take("model.embed_tokens.weight")  # [vocab, hidden]
        self.norm = take("model.norm.weight")
        tied = getattr(config, "tie_word_embeddings", False) or "lm_head.weight" not in w
        self.lm_head = (
            self._projection(["model.embed_tokens.weight"], [self.embed]) if tied else self._take(w, ["lm_head.weight"])
        )
        self.layers: list[DecoderLayer] = []
        for i in range(config.num_hidden_layers):
            p = f"model.layers.{i}."
            bias_names = [p + f"self_attn.{n}_proj.bias" for n in "qkv"]
            qkv_bias = torch.cat([take(n) for n in bias_names]) if bias_names[0] in w else None
            self.layers.append(
                DecoderLayer(
                    input_norm=self._input_norm(w, p, i),
                    qkv=self._take(w, [p + f"self_attn.{n}_proj.weight" for n in "qkv"], qkv_bias),
                    q_norm=w.pop(p + "self_attn.q_norm.weight", None),
                    k_norm=w.pop(p + "self_attn.k_norm.weight", None),
                    o=self._take(
                        w,
                        [p + "self_attn.o_proj.weight"],
                        self._row_parallel_bias(w.pop(p + "self_attn.o_proj.bias", None)),
                    ),
                    post_norm=take(p + "post_attention_layernorm.weight"),
                    gate_up=self._take(w, [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"]),
                    down=self._take(w, [p + "mlp.down_proj.weight"]),
                )
            )

    def _take(self, w: dict[str, torch.Tensor], names: list[str], bias: torch.Tensor | None = None) -> Projection:
        missing = [name for name in names if name not in w]
        if missing:
            raise SplitspecError(
                f"checkpoint is missing tensor {missing[0]!r}; is it a {self.config.model_type} model?"
            )
        return self._projection(names, [w.pop(name) for name in names], bias)

    def _projection(
        self, names: list[str], weights: list[torch.Tensor], bias: torch.Tensor | None = None
    ) -> Projection:
        """These checkpoint tensors stacked by rows, as one projection held as `quantization` says. With
        "gguf", projections the GGUF holds in 4-bit blocks use them; the others are quantized to int8."""
        weight = weights[0] if len(weights) == 1 else torch.cat(weights)
        if self.quantization is None:
            return Linear(weight, bias)
        try:
            if all(name in self._gguf_blocks for name in names):
                blocks = Int4Blocks.cat([self._gguf_blocks.pop(name) for name in names])
                return Int4Linear(blocks.q, blocks.scales, blocks.zeros, bias)
            return quantize_linear(weight, bias, "int8" if self.quantization == "gguf" else self.quantization)
        except ValueError as exc:
            raise SplitspecError(f"{names[0]} cannot be held as {self.quantization}: {exc}") from None

    def _row_parallel_bias(self, bias: torch.Tensor | None) -> torch.Tensor | None:
        """A row-parallel layer's bias is added once: by rank 0, before the all-reduce sums the ranks."""
        return bias if self.tp is None or self.tp.is_driver else None

    def _input_norm(self, w: dict[str, torch.Tensor], prefix: str, index: int) -> torch.Tensor | None:
        name = prefix + "input_layernorm.weight"
        if name not in w:
            raise SplitspecError(f"checkpoint is missing tensor {name!r}; is it a {self.config.model_type} model?")
        return w.pop(name)

    # -- cache bookkeeping -------------------------------------------------------------------------

    def cached_length(self, seq_id: str) -> int:
        return self.allocator.length(seq_id)

    def truncate(self, seq_id: str, length: int) -> None:
        self.allocator.truncate(seq_id, length)

    def free(self, seq_id: str) -> None:
        self.allocator.free(seq_id)

    @torch.inference_mode()
    def keep_rows(self, seq_id: str, start: int, kept: list[int]) -> None:
        moves = [(start + offset, start + i) for i, offset in enumerate(kept) if offset != i]
        if moves:  # destinations come before their sources and after every earlier source: copy in order
            table, size = self.allocator.block_table(seq_id), self.block_size
            sources = torch.tensor([table[src // size] * size + src % size for src, _ in moves], device=self.device)
            targets = torch.tensor([table[dst // size] * size + dst % size for _, dst in moves], device=self.device)
            for cache in (*self.key_cache, *self.value_cache):
                flat = cache.view(-1, *cache.shape[2:])  # [slots, kv_heads, head_dim]
                flat[targets] = flat[sources]
        self.allocator.truncate(seq_id, start + len(kept))

    def reuse_prefix(self, seq_id: str, token_ids: list[int]) -> int:
        return self.allocator.reuse_prefix(seq_id, token_ids)

    def cache_prefix(self, seq_id: str, token_ids: list[int]) -> None:
        self.allocator.cache_prefix(seq_id, token_ids)

    def can_fit(self, inputs: list[ForwardInput]) -> bool:
        needed = sum(self.allocator.blocks_needed(i.seq_id, len(i.token_ids)) for i in inputs)
        return needed <= self.allocator.num_free_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.allocator.num_free_blocks

    # -- forward -----------------------------------------------------------------------------------

    def forward(self, inputs: list[ForwardInput]) -> torch.Tensor:
        return self._forward(inputs)[0].to(torch.float32)

    def forward_with_hidden(
        self, inputs: list[ForwardInput], aux_layers: tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """aux_layers: decoder layers whose inputs (the un-normed residual stream entering layer i; 0 is
        the embedding) come first in each hidden row, in ascending order, before the final state:
        [rows, (len(aux_layers) + 1) * hidden]. EAGLE-3 heads read three of them."""
        for i in aux_layers:
            if not 0 <= i < len(self.layers):
                raise SplitspecError(f"layer {i} does not exist: the target has {len(self.layers)} decoder layers")
        logits, hidden = self._forward(inputs, aux_layers=tuple(sorted(set(aux_layers))))
        return logits.to(torch.float32), hidden  # states in the runner's dtype: drafters cast them

    def healthy(self) -> bool:
        """False once a tensor-parallel worker is gone: no pass can run any more."""
        return self.workers is None or not self.workers.lost()

    def close(self) -> None:
        """Stop the tensor-parallel workers (nothing to do for one process)."""
        if self.workers is not None:
            self.workers.close()

    def _forward(
        self, inputs: list[ForwardInput], extra_input: torch.Tensor | None = None, aux_layers: tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits of the logit rows, final hidden states of the hidden rows), on the runner's device.
        extra_input: one row per fed token for runners whose input is more than the token (EAGLE).
        aux_layers: as forward_with_hidden."""
        if not self.can_fit(inputs):
            raise OutOfKVBlocks(f"batch of {len(inputs)} sequences does not fit in {self.num_free_blocks} free blocks")
        if self.workers is None:
            return self.compute(self._layout(inputs, aux_layers), extra_input)
        if lost := self.workers.lost():
            raise TensorParallelWorkerLost(f"tensor-parallel rank {lost[0]} has exited; restart the model")
        layout = self._layout(inputs, aux_layers)
        try:
            broadcast_layout(layout, self.device)
            return self.compute(layout, extra_input)
        except RuntimeError as exc:  # a collective failed: a rank went away mid-pass
            lost = self.workers.wait_for_loss()
            self.workers.close(graceful=False)
            who = f"rank {lost[0]} exited" if lost else f"a collective failed ({exc})"
            raise TensorParallelWorkerLost(f"tensor-parallel {who}; restart the model") from None

    def _layout(self, inputs: list[ForwardInput], aux_layers: tuple[int, ...] = ()) -> PassLayout:
        """Give the inputs their cache slots and say which rows come back."""
        layout = PassLayout([], [], [], [], [], [], [], [], list(aux_layers))
        if any(i.tree for i in inputs) and not self.supports_trees:
            raise SplitspecError(
                "this runner verifies no tree-shaped drafts (quantized on the CPU, or tensor-parallel)"
            )
        rows_parents: list[int] = []
        for inp in inputs:
            start = self.allocator.length(inp.seq_id)
            n = len(inp.token_ids)
            if n == 0 or not 0 <= inp.num_logits <= n or not 0 <= inp.hidden_rows <= n:
                raise ValueError(f"sequence {inp.seq_id}: {n} new tokens, {inp.num_logits} logits requested")
            if start + n > self.max_model_len:
                raise ValueError(f"sequence {inp.seq_id} would exceed max_model_len={self.max_model_len}")
            row = len(layout.tokens)
            layout.logit_rows.extend(range(row + n - inp.num_logits, row + n))
            layout.hidden_rows.extend(range(row + n - inp.hidden_rows, row + n))
            layout.tokens.extend(inp.token_ids)
            parents = _rows_parents(inp)
            rows_parents.extend(parents)
            layout.positions.extend(start + depth - 1 for depth in draft_tree.depths(parents))
            layout.slots.extend(self.allocator.append(inp.seq_id, n))
        if any(i.tree for i in inputs):
            layout.parents = rows_parents
        for inp in inputs:
            layout.block_tables.append(self.allocator.block_table(inp.seq_id))
            layout.seq_lens.append(self.allocator.length(inp.seq_id))
            layout.query_lens.append(len(inp.token_ids))
        return layout

    @torch.inference_mode()
    def compute(self, layout: PassLayout, extra_input: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one laid-out pass: writes the new tokens' KV, returns (logits, hidden) of the asked rows.
        Every rank of a tensor-parallel group runs it with the same layout."""
        if (
            self.graphs is not None
            and extra_input is None
            and not layout.aux_layers
            and not layout.parents
            and self.graphs.fits(layout)
        ):
            logits, hidden = self.graphs.run(layout)  # every padded row: pick (and so copy) the asked ones
            logit_rows = to_device(layout.logit_rows, self.device)
            same = layout.hidden_rows == layout.logit_rows
            hidden = hidden[logit_rows if same else to_device(layout.hidden_rows, self.device)]
            logits = logits[logit_rows]
        else:
            logits, hidden = self._asked_rows(layout, extra_input)
        if self.logits_scaling != 1.0:
            logits = logits / self.logits_scaling
        return logits, hidden

    def _asked_rows(self, layout: PassLayout, extra_input: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The eager pass: (logits, final hidden) of the rows the layout asks for."""
        batch = AttentionBatch.build(
            layout.block_tables,
            layout.seq_lens,
            layout.query_lens,
            layout.slots,
            self.sliding_window,
            self.device,
            _trees(layout),
        )
        x = self._input_embeddings(torch.tensor(layout.tokens, device=self.device), extra_input)  # [tokens, hidden]
        captured: dict[int, torch.Tensor] = {i: x for i in layout.aux_layers}
        x = self._decoder(x, torch.tensor(layout.positions, device=self.device), batch, captured)
        logit_rows = torch.tensor(layout.logit_rows, device=self.device)
        if layout.hidden_rows == layout.logit_rows and not captured:
            hidden = self._final_hidden(x[logit_rows])
            return self._lm_head(hidden), hidden  # [num_logits, vocab], [num_logits, hidden]
        hidden_rows = torch.tensor(layout.hidden_rows, device=self.device)
        hidden = self._final_hidden(x[hidden_rows])
        if captured:  # [hidden_rows, (len(aux_layers) + 1) * hidden]
            hidden = torch.cat([captured[i][hidden_rows] for i in layout.aux_layers] + [hidden], dim=-1)
        return self._lm_head(self._final_hidden(x[logit_rows])), hidden

    def _all_rows(
        self, tokens: torch.Tensor, positions: torch.Tensor, batch: AttentionBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A graph's pass: (logits, final hidden) of every row."""
        hidden = self._final_hidden(self._decoder(self._input_embeddings(tokens, None), positions, batch))
        return self._lm_head(hidden), hidden

    def _lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.tp is None:
            return self.lm_head(hidden)
        return gather_logits(self.lm_head(hidden), self.vocab_size, self.tp)

    def _input_embeddings(self, tokens: torch.Tensor, extra_input: torch.Tensor | None) -> torch.Tensor:
        x = F.embedding(tokens, self.embed) if self.tp is None else embed(tokens, self.embed, self.vocab_shard)
        return x * self.embedding_multiplier if self.embedding_multiplier != 1.0 else x

    def _final_hidden(self, x: torch.Tensor) -> torch.Tensor:
        """What the output head reads: the last layer's output after the final norm."""
        return self.kernels.rms_norm(x, self.norm, self.eps)

    def _decoder(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        batch: AttentionBatch,
        captured: dict[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The decoder layers over x [tokens, hidden]. captured: layer id -> filled with the residual
        stream entering that layer (for EAGLE-3)."""
        freqs = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]  # [tokens, head_dim / 2]
        angles = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # [tokens, 1, head_dim]
        cos = (angles.cos() * self.rope_attention_factor).to(self.dtype)
        sin = (angles.sin() * self.rope_attention_factor).to(self.dtype)
        num_tokens = x.shape[0]
        q_size, kv_size = self.q_heads * self.head_dim, self.kv_heads * self.head_dim
        delta = None  # the last sublayer's output, added to x by the next norm
        for i, layer in enumerate(self.layers):
            x, h = self._layer_input(i, layer, x, delta)
            if captured and i in captured:
                captured[i] = x
            qkv = layer.qkv(h)  # [tokens, (q_heads + 2 * kv_heads) * head_dim]
            if layer.q_norm is None:
                self.kernels.rotate_heads(qkv, cos, sin, self.q_heads + self.kv_heads, self.head_dim)
            q = qkv[:, :q_size].view(num_tokens, self.q_heads, self.head_dim)
            k = qkv[:, q_size : q_size + kv_size].view(num_tokens, self.kv_heads, self.head_dim)
            v = qkv[:, q_size + kv_size :].view(num_tokens, self.kv_heads, self.head_dim)
            if layer.q_norm is not None:
                q = rotate_half(rms_norm_reference(q, layer.q_norm, self.eps), cos, sin)
                k = rotate_half(rms_norm_reference(k, layer.k_norm, self.eps), cos, sin)
            self.kernels.write_kv_cache(k, v, self.key_cache[i], self.value_cache[i], batch.slot_mapping)
            attn = self._attention(q, self.key_cache[i], self.value_cache[i], batch, self.attn_scale)
            x, h = self._add_rms_norm(x, self._scaled(layer.o(attn.reshape(num_tokens, q_size))), layer.post_norm)
            gate, up = layer.gate_up(h).chunk(2, dim=-1)
            delta = self._scaled(layer.down(F.silu(gate) * up))
        return x if delta is None else x + delta

    def _layer_input(
        self, index: int, layer: DecoderLayer, x: torch.Tensor, delta: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the residual stream entering layer `index`, the attention's input): x plus the last
        sublayer's output, and its norm (none in an EAGLE drafter's first layer)."""
        if layer.input_norm is None:
            return (x, x) if delta is None else (x + delta,) * 2
        return self._add_rms_norm(x, delta, layer.input_norm)

    def _add_rms_norm(
        self, x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + delta, its norm), in one kernel where the backend fuses them."""
        if delta is None:
            return x, self.kernels.rms_norm(x, weight, self.eps)
        return self.kernels.add_rms_norm(x, delta, weight, self.eps)

    def _scaled(self, partial: torch.Tensor) -> torch.Tensor:
        """A sublayer's output as the residual stream takes it: summed over ranks, then scaled."""
        out = self._reduce(partial)
        return out * self.residual_multiplier if self.residual_multiplier != 1.0 else out

    def _reduce(self, partial: torch.Tensor) -> torch.Tensor:
        """A row-parallel layer's output: the sum of every rank's part."""
        return partial if self.tp is None else all_reduce(partial)


def _rows_parents(inp: ForwardInput) -> list[int]:
    """Each fed token's parent among the input's tokens (-1: the cached context): a chain, then the tree."""
    n = len(inp.token_ids)
    if inp.tree is None:
        return draft_tree.chain(n)
    base = n - len(inp.tree)
    problem = "nothing is fed before the tree" if base < 1 else draft_tree.check_parents(inp.tree, len(inp.tree))
    if problem:
        raise ValueError(f"sequence {inp.seq_id}: {problem}")
    return draft_tree.chain(base) + [base - 1 if p == draft_tree.ROOT else base + p for p in inp.tree]


def _trees(layout: PassLayout) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """AttentionBatch.trees of a pass: for each sequence fed a tree, which of its tokens each sees and
    their positions."""
    trees, row = {}, 0
    for b, n in enumerate(layout.query_lens):
        parents = layout.parents[row : row + n]
        if parents and not draft_tree.is_chain(parents):
            trees[b] = (draft_tree.ancestors_mask(parents), torch.tensor(layout.positions[row : row + n]))
        row += n
    return trees
