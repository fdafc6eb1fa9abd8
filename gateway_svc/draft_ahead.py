"""Drafting the next round while the verifier checks this one, so that a round crosses the two links
(to the proposer, to the verifier) side by side instead of one after the other.

While round n's draft D is verified, the proposer drafts after D as if it were all accepted. The first
token of that draft is a guess at the token the verifier adds after D; when the round commits exactly
D and that guess, the rest was drawn from the true context and is round n+1's draft, with its exact q.
Any other outcome discards it and round n+1 asks for a draft as usual: a miss costs proposer time,
never output.
"""

from __future__ import annotations

from dataclasses import dataclass

from splitspec.drafts import Draft


@dataclass
class AheadDraft:
    assumed: list[int]
    """The tokens after the committed ones that it assumed: the draft being verified when it was made
    (with pipelined steps, all the steps in flight were expected to commit)."""
    draft: Draft
    """Drafted after `assumed`: a guess at the verifier's next token, then the next round's draft."""
    base_len: int = 0
    """The committed tokens when it was asked for."""

    @property
    def guessed_context(self) -> list[int]:
        """The tokens after base_len that the draft after the guess continues."""
        return self.assumed + self.draft.token_ids[:1]

    @property
    def after_guess(self) -> Draft:
        return Draft(self.draft.token_ids[1:], self.draft.q[1:])

    def next_draft(self, committed: list[int]) -> Draft | None:
        """The next round's draft if the round committed `assumed` and then the guess; None otherwise
        (or when nothing follows the guess)."""
        if len(self.draft.token_ids) < 2 or committed != self.guessed_context:
            return None
        return self.after_guess
