"""One forward pass of the native runner as plain lists: what the driver's block allocator decided
(cache slots, block tables) and which rows the caller wants back. Every tensor-parallel rank runs
the same pass from it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PassLayout:
    tokens: list[int]
    positions: list[int]
    slots: list[int]  # the flat KV-cache slot each new token is written to
    block_tables: list[list[int]]  # per sequence
    seq_lens: list[int]  # per sequence: context length including the new tokens
    query_lens: list[int]  # per sequence: new tokens
    logit_rows: list[int]  # rows of the new tokens whose logits come back
    hidden_rows: list[int]  # rows whose final hidden states come back
    aux_layers: list[int] = field(default_factory=list)
    """Decoder layers whose inputs come back too, before the final state (EAGLE-3's target states)."""
    parents: list[int] = field(default_factory=list)
    """Empty, or per token the row of its parent among its sequence's tokens of this pass (-1: the
    cached context): a pass with a tree-shaped draft (ForwardInput.tree)."""
