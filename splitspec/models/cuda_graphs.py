"""CUDA graphs for the native runner's short passes: decode steps and verify passes.

A verify pass of a small model is a thousand small kernels; on an H100 the default model's pass took
22 ms of which the GPU was busy 5 ms (benchmarks/profile_verify.py): the host's launches set the pace.
A captured graph launches them all at once. Graphs have fixed shapes and addresses, so a pass is padded
to a bucket (sequences and tokens, each a power of two) whose inputs live in static buffers:

- padding sequences have no query rows and no context; the attention kernel skips them;
- padding tokens belong to no sequence: they are token 0 at position 0 and write their keys and values
  to a scratch block of the KV cache that the allocator never hands out;
- the graph computes the logits and final hidden states of every row; the caller's rows are picked out
  after the replay, so the real rows are computed exactly as an eager pass computes them.

Only passes whose every sequence feeds at most `GRAPH_MAX_QUERY` tokens are captured (the attention
kernel then needs one tile of query rows per sequence, whatever the lengths); prefill runs eagerly.
Graphs are captured the first time their bucket is needed and share one memory pool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from splitspec.models.pass_layout import PassLayout
from splitspec_kernels.paged_attention import AttentionBatch

GRAPH_MAX_QUERY = 16  # the attention kernel's tile of query rows: one tile per sequence
GRAPH_MAX_SEQS = 256
GRAPH_MAX_TOKENS = 2048

# (tokens [T], positions [T], batch) -> (logits [T, vocab], final hidden [T, hidden]) of every row
PassBody = Callable[[torch.Tensor, torch.Tensor, AttentionBatch], tuple[torch.Tensor, torch.Tensor]]


def bucket(n: int) -> int:
    """The smallest power of two >= n."""
    return 1 << max(0, n - 1).bit_length()


@dataclass(frozen=True)
class GraphShape:
    num_seqs: int
    num_tokens: int

    @staticmethod
    def of(layout: PassLayout) -> "GraphShape":
        return GraphShape(bucket(len(layout.seq_lens)), bucket(len(layout.tokens)))


class StaticPass:
    """The fixed-address inputs of one bucket, filled from a layout with one host-to-device copy."""

    def __init__(self, shape: GraphShape, max_blocks: int, scratch_slot: int, device: torch.device) -> None:
        self.shape = shape
        self.max_blocks = max_blocks
        self.scratch_slot = scratch_slot
        s, t = shape.num_seqs, shape.num_tokens
        self.sizes = (t, t, t, s * max_blocks, s, s + 1)
        self.packed = torch.zeros(sum(self.sizes), dtype=torch.int64, device=device)
        tokens, positions, slots, tables, seq_lens, query_start = self.packed.split(self.sizes)
        self.tokens, self.positions = tokens, positions
        self.batch_tensors = (tables.view(s, max_blocks), seq_lens, query_start, slots)

    def fill(self, layout: PassLayout) -> None:
        """Write the layout, padded, into the static buffers (stream-ordered: no host sync)."""
        s = self.shape.num_seqs
        n, b = len(layout.tokens), len(layout.seq_lens)
        host = torch.zeros(sum(self.sizes), dtype=torch.int64)
        tokens, positions, slots, tables, seq_lens, query_start = host.split(self.sizes)
        tokens[:n] = torch.tensor(layout.tokens)
        positions[:n] = torch.tensor(layout.positions)
        slots[:n] = torch.tensor(layout.slots)
        slots[n:] = self.scratch_slot
        tables = tables.view(s, self.max_blocks)
        for row, table in enumerate(layout.block_tables):
            tables[row, : len(table)] = torch.tensor(table)
        seq_lens[:b] = torch.tensor(layout.seq_lens)
        query_start[1 : b + 1] = torch.tensor(layout.query_lens).cumsum(0)
        query_start[b + 1 :] = n  # padding sequences: no query rows
        self.packed.copy_(host.pin_memory() if self.packed.is_cuda else host, non_blocking=True)

    def attention_batch(self, sliding_window: int | None) -> AttentionBatch:
        tables, seq_lens, query_start, slots = self.batch_tensors
        return AttentionBatch(
            block_tables=tables,
            seq_lens=seq_lens,
            query_start=query_start,
            # an upper bound: the kernel reads each sequence's true length from query_start, and the
            # grid needs only the largest
            query_lens=[GRAPH_MAX_QUERY] * self.shape.num_seqs,
            slot_mapping=slots,
            sliding_window=sliding_window,
        )


class PassGraphs:
    """The captured passes of one runner, by bucket. capture=False runs the padded pass eagerly instead of
    replaying a graph: the CPU tests check the padding that way."""

    def __init__(
        self,
        body: PassBody,
        *,
        max_blocks: int,
        scratch_slot: int,
        sliding_window: int | None,
        device: torch.device,
        capture: bool = True,
        max_seqs: int = GRAPH_MAX_SEQS,
        max_tokens: int = GRAPH_MAX_TOKENS,
    ) -> None:
        self.body = body
        self.max_blocks = max_blocks
        self.scratch_slot = scratch_slot
        self.sliding_window = sliding_window
        self.device = device
        self.capture = capture
        self.max_seqs = max_seqs
        self.max_tokens = max_tokens
        self.pool = torch.cuda.graph_pool_handle() if capture else None
        self._passes: dict[GraphShape, tuple[StaticPass, tuple[torch.cuda.CUDAGraph, tuple] | None]] = {}

    def fits(self, layout: PassLayout) -> bool:
        return (
            len(layout.seq_lens) <= self.max_seqs
            and len(layout.tokens) <= self.max_tokens
            and max(layout.query_lens) <= GRAPH_MAX_QUERY
        )

    @property
    def num_captured(self) -> int:
        return sum(captured is not None for _, captured in self._passes.values())

    def run(self, layout: PassLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, final hidden) of every padded row, the layout's own rows first. The tensors may be a
        graph's outputs, which its next replay overwrites: the caller copies what it keeps."""
        shape = GraphShape.of(layout)
        entry = self._passes.get(shape)
        if entry is None:
            static = StaticPass(shape, self.max_blocks, self.scratch_slot, self.device)
            static.fill(layout)
            result = self._eager(static)  # compiles the kernels before the capture; this pass's result
            self._passes[shape] = (static, self._capture(static) if self.capture else None)
            return result
        static, captured = entry
        static.fill(layout)
        if captured is None:
            return self._eager(static)
        graph, outputs = captured
        graph.replay()
        return outputs

    def _eager(self, static: StaticPass) -> tuple[torch.Tensor, torch.Tensor]:
        return self.body(static.tokens, static.positions, static.attention_batch(self.sliding_window))

    def _capture(self, static: StaticPass) -> tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, torch.Tensor]]:
        """Record the pass over the static buffers; nothing runs until a replay."""
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            outputs = self._eager(static)
        return graph, outputs
