"""Pipelined rounds with a remote drafter: steps at the verifier before the outcome they build on is known.

While the verifier checks a round's draft D, the proposer drafts after D as if it were all accepted: a
guess g at the verifier's next token, then the next round's draft. The gateway sends that draft to the
verifier at once, as a pipelined step that assumes the steps before it commit exactly D and g
(VerifyStep.assumed_token_ids). The verifier runs it right after them and verifies the draft only if
they did; otherwise the step verifies no drafts and still commits a token. Either way the draft was
drawn from the exact context it is verified in, with its exact q.

This module is the gateway's bookkeeping for that, without I/O: what the steps in flight are expected
to commit, and whether a draft made ahead still fits what has been committed since it was asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway_svc.draft_ahead import AheadDraft
from splitspec.drafts import Draft


@dataclass
class Prediction:
    """What the gateway expects its pipelined steps in flight to commit.

    `tail`: the tokens after the committed ones that the steps in flight commit if every draft is
    accepted, up to the last step's drafts (its own next token is unknown until a draft ahead guesses
    it); empty with no step in flight, None once a step has committed something else (the steps after it
    verify no drafts, and what they commit is unknown until they return).
    """

    tail: list[int] | None = field(default_factory=list)

    def sent(self, assumed: list[int], draft: Draft) -> None:
        """A step was sent with these assumed tokens (relative to the committed ones) and drafts."""
        self.tail = assumed + list(draft.token_ids)

    def committed(self, tokens: list[int], steps_left: int) -> None:
        """The oldest step in flight committed `tokens`; `steps_left` are still in flight."""
        if steps_left == 0:
            self.tail = []
        elif self.tail is not None and self.tail[: len(tokens)] == tokens:
            self.tail = self.tail[len(tokens) :]
        else:
            self.tail = None

    def assumed_for(self, reply: AheadDraft, committed_since: list[int], in_flight: int) -> list[int] | None:
        """The tokens a step carrying `reply`'s draft (after its guess) must assume after the committed
        ones, or None when that draft is of no use: empty, made after another outcome than the one
        expected now, or after a guess that the verifier did not commit.

        committed_since: the tokens committed after reply.base_len; in_flight: steps still in flight."""
        context = reply.guessed_context
        if len(reply.draft.token_ids) < 2 or len(committed_since) > len(context):
            return None
        if len(committed_since) == len(context):  # the guessed token is committed: no step is in flight
            return [] if committed_since == context and in_flight == 0 else None
        if self.tail is None or context[:-1] != committed_since + self.tail:
            return None
        return context[len(committed_since) :]
