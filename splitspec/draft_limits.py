"""How many drafts a round may carry: one rule for the in-process engine and the gateway alike."""

from __future__ import annotations

from splitspec.sampling_params import SamplingParams
from splitspec.sequence import Sequence

MAX_DRAFTS_PER_STEP = 128
"""The most drafts a verifier takes in one step, and a proposer drafts for one call, unless told
otherwise (--max-drafts-per-step): a bound on what one message can make a pod compute."""

MAX_EXCLUDED_FIRST_TOKENS = 64
"""The most tokens a draft ahead may rule out as its first (DraftStep.excluded_first_token_ids)."""

DEFAULT_AHEAD_REJECTIONS = 0
"""With direct drafts the verifier drafts ahead for the outcome where every draft is accepted only, unless
told (--draft-ahead-rejections). Drafting ahead for a rejection too raised the share of steps whose
draft was ready, but on a proposer sharing the verifier's cores the extra draft costs what it saves
(verifier_svc.remote_drafts; measured in docs/benchmarks.md, "Direct drafts")."""

MAX_REMOTE_DRAFT_TIMEOUT_S = 60.0
"""The longest a verifier waits for a proposer's draft for one step (VerifyStep.remote_draft)."""


def max_drafts(seq: Sequence, num_speculative_tokens: int, max_model_len: int) -> int:
    """At most K, no further than the model's context, and never more than the request may still emit
    less one: the correction or bonus token that follows the drafts counts too."""
    k = min(num_speculative_tokens, max_model_len - len(seq.tokens))
    if seq.params.max_tokens is not None:
        k = min(k, seq.params.max_tokens - seq.num_output_tokens - 1)
    return max(0, k)


def keeps_fixed_k(drafts_are_sampled: bool, params: SamplingParams) -> bool:
    """Whether adaptive K must leave this request at its fixed K.

    A sampled request drafting from a q that is not one-hot (a draft model) keeps K: which positions
    get drafted changes its individual samples (never their distribution), and a seed must reproduce
    them. Greedy and one-hot drafts are verified by the target's own draw, so K may vary freely.
    """
    return drafts_are_sampled and not params.greedy
