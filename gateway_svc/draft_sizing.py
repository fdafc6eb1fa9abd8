"""How many drafts a request's next round carries, and which drafter should make them: adaptive K
(splitspec.adaptive_k) priced with the verifier's measured pass costs, the other sequences in its pass,
and the measured trips to the proposer."""

from __future__ import annotations

from dataclasses import replace

from gateway_svc.backends import ProposerBackend, VerifierBackend
from gateway_svc.request_state import Request
from gateway_svc.round_plan import RoundMode
from splitspec.adaptive_k import RoundTrip, best_tokens_per_second, choose_drafts
from splitspec.draft_limits import max_drafts


def num_drafts(req: Request, verifier: VerifierBackend, proposer: ProposerBackend | None, max_model_len: int) -> int:
    """At most the request's K, and with the verifier's measured pass costs and the measured round
    trips, only as many as pay for themselves."""
    seq = req.seq
    k = max_drafts(seq, req.num_speculative_tokens, max_model_len)
    if k == 0 or not req.plan.adaptive or req.plan.fixed_k or verifier.cost_model is None:
        return k
    # the verifier batches this step with the other sequences' steps: draft only what raises the
    # whole pass's tokens per second, given the rows and tokens the others last brought
    rows, tokens = verifier.others_in_pass(seq.seq_id)
    rate = req.acceptance.rate
    trip = round_trip(req, verifier, req.local, proposer, rate)
    gains = req.draft_gains(k)  # by position: n-gram drafts are kept more often deep in a draft
    return choose_drafts([gains], rows + 1, verifier.cost_model, base_tokens=tokens, round_trip=trip)[0]


def round_trip(
    req: Request, verifier: VerifierBackend, local: bool, proposer: ProposerBackend | None, rate: float
) -> RoundTrip:
    """What a round drafted locally or by `proposer` (at acceptance `rate`) costs besides the pass."""
    pipelined = req.plan.mode(local) == RoundMode.PIPELINED
    trip = RoundTrip(link_s=0.0 if pipelined else verifier.link.value or 0.0)  # pipelined: never waited
    if not local and proposer is not None:  # drafts made there cost a trip to the proposer
        trip = replace(
            trip,
            draft_s=proposer.link.value or 0.0,
            draft_token_s=proposer.draft_token.value or 0.0,
            ahead_rate=rate if req.plan.draft_ahead and not req.plan.direct_drafts else 0.0,
        )
    return trip


def drafter_value(
    req: Request, verifier: VerifierBackend, local: bool, proposer: ProposerBackend | None, max_model_len: int
) -> float:
    """The expected tokens per second of the request's next rounds if the verifier's n-gram lookup
    (local) or `proposer` drafted them; 0 with no proposer to draft."""
    seq, drafters = req.seq, req.drafters
    if not local and proposer is None:
        return 0.0
    proposer = None if local else proposer
    limit = max_drafts(seq, req.num_speculative_tokens, max_model_len)
    rows, tokens = verifier.others_in_pass(seq.seq_id)
    rate = (drafters.local if local else drafters.remote).rate
    trip = round_trip(req, verifier, local, proposer, rate)
    if proposer is not None and proposer.draft_token.value is None:
        # not measured yet: price a draft token as a target pass, the most a draft model should cost
        trip = replace(trip, draft_token_s=verifier.cost_model.cost(1))
    value = best_tokens_per_second(rate, limit, rows + 1, verifier.cost_model, tokens, trip)
    if local:  # a round without a match drafts nothing
        unmatched = best_tokens_per_second(0.0, 0, rows + 1, verifier.cost_model, tokens, trip)
        value = drafters.matches.rate * value + (1 - drafters.matches.rate) * unmatched
    return value
