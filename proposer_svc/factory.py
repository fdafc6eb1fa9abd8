"""Build the drafter a SpeculativeConfig names, for the in-process engine and the proposer service alike."""

from __future__ import annotations

import torch

from proposer_svc.proposer import Proposer
from splitspec.config import SpeculationMethod, SpeculativeConfig
from splitspec.devices import auto_dtype, resolve_device
from splitspec.errors import SplitspecError
from splitspec.models.linear import packs


def drafting_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on a GPU, and where this CPU multiplies it natively: a speculator's vocabulary-sized
    heads then stream half the bytes (2.2x faster for one draft token, 3.6x for two, on the reference
    machine; benchmarks/speculator_cost.py, docs/benchmarks.md). Drafts are only proposals, so their
    precision cannot change a token of the output."""
    if device.type == "cuda":
        return auto_dtype(None, device)
    return torch.bfloat16 if packs(torch.bfloat16) else torch.float32


def build_proposer(
    spec: SpeculativeConfig,
    *,
    target_vocab_size: int | None,
    target_hidden_size: int | None = None,
    target_model: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    max_num_seqs: int = 64,
) -> Proposer:
    """target_vocab_size: drafts are restricted to the target's vocabulary (None: the draft's own).
    target_hidden_size: checked against drafters that read the target's hidden state (None: unknown).
    target_model: the target checkpoint, whose output head (and embedding, unless the head has its
    own) an EAGLE head uses. device: the drafter's own, which need not be the target's."""
    placement = resolve_device(device)
    if spec.method == SpeculationMethod.NGRAM:
        from proposer_svc.ngram import NgramProposer

        return NgramProposer(spec.prompt_lookup_min, spec.prompt_lookup_max)
    if spec.method == SpeculationMethod.SUFFIX:
        from proposer_svc.suffix import SuffixProposer

        return SuffixProposer(spec.suffix)
    if spec.method == SpeculationMethod.MLP_SPECULATOR:
        from proposer_svc.mlp_speculator import MLPSpeculator, MLPSpeculatorProposer
        from splitspec.checkpoint import resolve_checkpoint

        speculator = MLPSpeculator(
            resolve_checkpoint(spec.draft_model), dtype=drafting_dtype(placement), device=placement
        )
        if target_vocab_size is not None and speculator.config.vocab_size != target_vocab_size:
            raise SplitspecError(
                f"MLP speculator {spec.draft_model} predicts over {speculator.config.vocab_size} tokens, the target "
                f"has {target_vocab_size}: it was trained for another model"
            )
        if target_hidden_size is not None and speculator.config.emb_dim != target_hidden_size:
            raise SplitspecError(
                f"MLP speculator {spec.draft_model} reads hidden states of size {speculator.config.emb_dim}, the "
                f"target's are {target_hidden_size}: it was trained for another model"
            )
        return MLPSpeculatorProposer(speculator)
    if spec.method == SpeculationMethod.EAGLE:
        from proposer_svc.eagle import EagleProposer, EagleRunner
        from splitspec.checkpoint import resolve_checkpoint

        if target_model is None:
            raise SplitspecError("an EAGLE head scores drafts with the target's output head: give the target model too")
        runner = EagleRunner(
            resolve_checkpoint(spec.draft_model),
            resolve_checkpoint(target_model),
            device=placement,
            dtype=auto_dtype(None, placement),
            kv_cache_memory_bytes=256 << 20,
            max_num_seqs=max_num_seqs,
        )
        return EagleProposer(runner)
    if spec.method == SpeculationMethod.EAGLE3:
        from proposer_svc.eagle3 import Eagle3Proposer, Eagle3Runner
        from splitspec.checkpoint import resolve_checkpoint

        if target_model is None:
            raise SplitspecError("an EAGLE-3 head reads the target's layers and embedding: give the target model too")
        runner = Eagle3Runner(
            resolve_checkpoint(spec.draft_model),
            resolve_checkpoint(target_model),
            device=placement,
            dtype=auto_dtype(None, placement),
            kv_cache_memory_bytes=256 << 20,
            max_num_seqs=max_num_seqs,
        )
        return Eagle3Proposer(runner)
    from proposer_svc.draft_model import DraftModelProposer
    from splitspec.checkpoint import resolve_checkpoint
    from splitspec.config import RunnerConfig
    from splitspec.models.loader import load_runner

    runner = load_runner(
        resolve_checkpoint(spec.draft_model),
        RunnerConfig(
            device=str(placement),
            dtype=dtype,
            kv_cache_memory_bytes=256 << 20,
            max_num_seqs=max_num_seqs,
            quantization=spec.quantization,
        ),
    )
    return DraftModelProposer(
        runner, target_vocab_size=target_vocab_size or runner.vocab_size, draft_top_k=spec.draft_top_k
    )
