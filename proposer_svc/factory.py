"""Build the drafter a SpeculativeConfig names, for the in-process engine and the proposer service alike."""

from __future__ import annotations

from proposer_svc.proposer import Proposer
from splitspec.config import SpeculativeConfig


def build_proposer(
    spec: SpeculativeConfig, *, target_vocab_size: int | None, dtype: str = "auto", max_num_seqs: int = 64
) -> Proposer:
    """target_vocab_size: drafts are restricted to the target's vocabulary (None: the draft's own)."""
    if spec.method == "ngram":
        from proposer_svc.ngram import NgramProposer

        return NgramProposer(spec.prompt_lookup_min, spec.prompt_lookup_max)
    from proposer_svc.draft_model import DraftModelProposer
    from splitspec.checkpoint import resolve_checkpoint
    from splitspec.models.loader import load_runner

    runner = load_runner(
        resolve_checkpoint(spec.draft_model), dtype=dtype, kv_cache_memory_bytes=256 << 20, max_num_seqs=max_num_seqs
    )
    return DraftModelProposer(runner, target_vocab_size=target_vocab_size or runner.vocab_size, draft_top_k=spec.draft_top_k)
