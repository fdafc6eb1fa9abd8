"""How a request's rounds run, decided once from three things: what the drafter is (DrafterTraits, as
the proposers report it), the gateway's settings (RoundSettings), and the request (its K and sampling).

`plan_request` is the only place that decision is made; `RequestPlan.mode` names the round mode for the
drafter the request is on now (a measured request may move between the verifier's n-grams and its
proposer, gateway_svc.drafter_choice). docs/round-path.md has the table of modes.
"""

from __future__ import annotations

from dataclasses import dataclass

from splitspec.config import DEFAULT_NUM_SPECULATIVE_TOKENS
from splitspec.draft_limits import keeps_fixed_k
from splitspec.drafter_traits import DrafterTraits
from splitspec.drafts import HiddenStates
from splitspec.sampling_params import SamplingParams
from splitspec.str_enum import StrEnum


class RoundMode(StrEnum):
    """PIPELINED: no round waits for a proposer (the verifier drafts n-grams itself, asks the proposer
    itself with direct drafts, or nothing is drafted), so several steps are in flight
    (VerifyStep.pipelined). DRAFTED_AHEAD: a proposer drafts at the gateway, and the draft for the next
    round is made while this one is verified and sent at once (gateway_svc.ahead_pipeline). ONE_STEP:
    one step at a time (a fixed K, a drafter reading hidden states, or pipelining off)."""

    PIPELINED = "pipelined"
    DRAFTED_AHEAD = "drafted_ahead"
    ONE_STEP = "one_step"


@dataclass(frozen=True)
class RoundSettings:
    """The gateway's round policy, from its flags (GatewaySettings)."""

    num_speculative_tokens: int | None = None
    """Drafts per round unless the request says otherwise; None: the proposers' default."""
    adaptive: bool = True
    """Draft fewer where the measured pass costs and acceptance say more would not pay."""
    local_ngram: bool = True
    """With an n-gram drafter, the verifiers draft by n-gram lookup themselves (VerifyStep.local_draft)."""
    verifier_ngram: bool = True
    """With a proposer drafting otherwise (a draft model), each request is drafted by the verifier's
    n-grams or its proposer, whichever is measured to yield more (gateway_svc.drafter_choice)."""
    prompt_lookup: tuple[int, int] = (1, 4)
    """(min, max) n-gram sizes of the verifiers' own drafts."""
    tree_width: int = 1
    """The verifiers' own n-gram drafts are trees with at most this many branches per token."""
    draft_ahead: bool = True
    pipeline_steps: bool = True
    direct_drafts: bool = False
    ngram_without_proposers: bool = False
    """The verifiers' n-grams draft even though no proposer has reported: the gateway was told
    `--method ngram`, or has no proposers to ask."""


@dataclass(frozen=True)
class RequestPlan:
    """What a request's rounds do, for its whole life."""

    num_speculative_tokens: int
    """Its K: 0 when nothing drafts for it."""
    hidden_states: HiddenStates
    """What the verifier returns of the target's hidden states, for the proposer."""
    hidden_layers: tuple[int, ...]
    """Which states: the inputs of these target layers (EAGLE-3); () the final state."""
    fixed_k: bool
    """K stays as asked: the drafts decide a seeded request's samples (splitspec.draft_limits)."""
    adaptive: bool
    every_draft: bool
    """The verifier verifies every draft it is sent (VerifyStep.every_draft): the gateway's K is fixed."""
    local_ngram: tuple[int, int] | None
    """(min, max): the verifier may draft its rounds by n-gram lookup."""
    tree_width: int
    """The most branches per token of those n-gram drafts (1: chains)."""
    local_speculator: bool
    """The verifier drafts its rounds with the speculator beside its target (and keeps the states)."""
    starts_local: bool
    """Its first rounds are drafted on the verifier (its n-grams or its speculator), not by a proposer."""
    measured: bool
    """It moves between the verifier's n-grams and its proposer, as measured."""
    draft_ahead: bool
    """The proposer drafts the next round while the verifier checks this one."""
    drafts_after_rejection: bool
    """The proposer has another guess after a rejection (the verifier may draft ahead for one too)."""
    affinity: bool
    """Related requests go to the same proposer pod (the proposers remember outputs)."""
    pipeline_steps: bool
    direct_drafts: bool

    def mode(self, local: bool) -> RoundMode:
        """The round mode while its rounds are drafted by the verifier's n-grams (local) or not."""
        if self.pipeline_steps and (local or self.num_speculative_tokens == 0 or self.direct_drafts):
            return RoundMode.PIPELINED
        if self.pipeline_steps and self.draft_ahead and not self.fixed_k:
            return RoundMode.DRAFTED_AHEAD
        return RoundMode.ONE_STEP


def default_num_speculative_tokens(traits: DrafterTraits | None, settings: RoundSettings) -> int:
    """The K of a request that names none: the gateway's, else its proposers' (the commands' default for
    the verifiers' own n-grams); 0 with no drafter."""
    if settings.num_speculative_tokens is not None:
        return settings.num_speculative_tokens
    if traits is not None:
        return traits.num_speculative_tokens
    return DEFAULT_NUM_SPECULATIVE_TOKENS if settings.ngram_without_proposers and settings.local_ngram else 0


def plan_request(
    traits: DrafterTraits | None,
    settings: RoundSettings,
    num_speculative_tokens: int,
    params: SamplingParams,
    on_verifiers: bool = False,
) -> RequestPlan:
    """traits: the proposers' drafter, None while none has reported; with on_verifiers, the speculator
    the verifiers hold beside their targets. num_speculative_tokens: the request's K (its own, or
    default_num_speculative_tokens)."""
    if on_verifiers and traits is not None:
        return _speculator_on_verifiers(traits, settings, num_speculative_tokens, params)
    ngram_drafter = traits.drafts_ngrams if traits is not None else settings.ngram_without_proposers
    local_only = ngram_drafter and settings.local_ngram
    measures = (
        traits is not None
        and not traits.drafts_ngrams
        and not traits.remembers_outputs  # it must see every committed token: its rounds stay on the proposer
        and traits.hidden_states == HiddenStates.NONE
        and settings.verifier_ngram
    )
    local_ngram = settings.prompt_lookup if local_only or measures else None
    k = num_speculative_tokens
    if traits is None and not local_only:
        k = 0  # no proposer has said what it drafts
    elif traits is not None and not local_only:
        k = min(k, traits.max_num_speculative_tokens)
    samples = traits is not None and traits.samples_drafts
    fixed_k = keeps_fixed_k(samples, params)
    adaptive = settings.adaptive and not (traits is not None and traits.sizes_own_drafts)
    measured = measures and adaptive and k > 0 and not fixed_k
    return RequestPlan(
        num_speculative_tokens=k,
        hidden_states=traits.hidden_states if traits is not None and not local_only else HiddenStates.NONE,
        hidden_layers=traits.hidden_layers if traits is not None and not local_only else (),
        fixed_k=fixed_k,
        adaptive=adaptive,
        every_draft=not settings.adaptive,
        local_ngram=local_ngram,
        tree_width=settings.tree_width,
        local_speculator=False,
        starts_local=local_ngram is not None and (measured or not measures),
        measured=measured,
        # drafts ahead are chains: a sampled request whose rounds draft trees from q would draw other
        # samples in a round drafted ahead, and its seed must reproduce them
        draft_ahead=settings.draft_ahead
        and traits is not None
        and traits.drafts_ahead
        and not (settings.tree_width > 1 and fixed_k),
        drafts_after_rejection=traits is not None and traits.drafts_after_rejection,
        affinity=traits is not None and traits.remembers_outputs,
        pipeline_steps=settings.pipeline_steps,
        direct_drafts=settings.direct_drafts,
    )


def _speculator_on_verifiers(
    traits: DrafterTraits, settings: RoundSettings, num_speculative_tokens: int, params: SamplingParams
) -> RequestPlan:
    """Every round drafted by the verifier's speculator: pipelined as the verifier's n-grams are (the
    head drafts right before each pass, from the states the pass before left there)."""
    return RequestPlan(
        num_speculative_tokens=min(num_speculative_tokens, traits.max_num_speculative_tokens),
        hidden_states=HiddenStates.NONE,
        hidden_layers=(),
        fixed_k=keeps_fixed_k(traits.samples_drafts, params),
        adaptive=settings.adaptive and not traits.sizes_own_drafts,
        every_draft=not settings.adaptive,
        local_ngram=None,
        tree_width=settings.tree_width,
        local_speculator=True,
        starts_local=True,
        measured=False,
        draft_ahead=False,
        drafts_after_rejection=False,
        affinity=False,
        pipeline_steps=settings.pipeline_steps,
        direct_drafts=False,
    )
