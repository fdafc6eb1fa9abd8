"""The head a verifier drafts with beside its target (serve-verifier --speculative-config), built here
in the entry layer: the drafters live in proposer_svc, which verifier_svc does not import."""

from __future__ import annotations

from pathlib import Path

from splitspec.errors import SplitspecError
from verifier_svc.local_speculator import LocalSpeculator


def build_local_speculator(
    speculative_config: dict, target: Path, vocab_size: int, device: str, max_num_seqs: int, max_drafts_per_step: int
) -> LocalSpeculator:
    """speculative_config: as LLM's ({"model": DIR, "method"?: ..., "num_speculative_tokens"?: K}); a
    speculators-format head gives its own K when the config does not."""
    from proposer_svc.factory import build_proposer
    from splitspec.config import build_speculative_config
    from splitspec.eagle3_checkpoint import speculators_serving

    config = dict(speculative_config)
    if "model" not in config:
        raise SplitspecError('--speculative-config needs "model": the head\'s directory')
    serving = speculators_serving(config["model"])
    if serving is not None:
        config = {**serving[1], **config}
    spec = build_speculative_config(config)
    proposer = build_proposer(
        spec, target_vocab_size=vocab_size, target_model=str(target), device=device, max_num_seqs=max_num_seqs
    )
    return LocalSpeculator(proposer, spec.num_speculative_tokens, max_drafts_per_step)
