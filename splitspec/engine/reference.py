"""The whole algorithm on one screen: one sequence, no batching, no scheduling, a fixed K.

Each round drafts up to K tokens, scores the uncached committed tokens and the drafts in one target
pass, keeps the accepted drafts plus the correction or bonus token (verifier_svc/rejection_sampler.py
says what those are), and cuts the KV cache back to every committed token but the last. The batched
engine must commit exactly what this loop commits for the same seed (tests/core/test_reference_loop.py).
"""

from __future__ import annotations

from proposer_svc.proposer import Proposer
from splitspec.draft_limits import max_drafts
from splitspec.drafts import Draft, DraftRequest, HiddenStates
from splitspec.errors import SplitspecError
from splitspec.logits_processing import apply_logit_bias, apply_min_p
from splitspec.models.runner import ForwardInput, ModelRunner
from splitspec.sampling_params import SamplingParams
from splitspec.sequence import Sequence
from splitspec.stop_checker import StopChecker
from splitspec.token_ban import TokenBan
from splitspec.token_penalties import TokenPenalties
from verifier_svc.rejection_sampler import VerifyRequest, verify


def generate_one(
    runner: ModelRunner,
    proposer: Proposer | None,
    prompt_token_ids: list[int],
    params: SamplingParams,
    seed: int,
    num_speculative_tokens: int,
    stop_checker: StopChecker,
) -> Sequence:
    if params.structured_outputs is not None:  # the grammar's masks and draft cuts: Verifier.verify
        raise SplitspecError("the reference loop does not do structured outputs; use LLM.generate")
    seq = Sequence("reference", None, list(prompt_token_ids), params, seed)
    ban = TokenBan.for_request(params, len(prompt_token_ids), stop_checker.eos_token_ids)
    penalties = TokenPenalties.for_request(params, len(prompt_token_ids))
    reads = proposer.hidden_states if proposer else HiddenStates.NONE
    hidden = None  # the target's states the drafter has not seen yet
    try:
        while not seq.finished:
            # propose
            k = max_drafts(seq, num_speculative_tokens if proposer else 0, runner.max_model_len)
            draft = Draft()
            if proposer is not None:
                request = DraftRequest(seq.seq_id, seq.tokens, k, params.temperature, params.top_k, seed, hidden)
                draft = proposer.propose([request])[0]
                draft = Draft(draft.token_ids[:k], draft.q[:k])
            # verify: one target pass over the tokens the cache lacks, then the drafts
            k = len(draft.token_ids)
            fed = seq.tokens[runner.cached_length(seq.seq_id) :] + draft.token_ids
            step = ForwardInput(seq.seq_id, fed, k + 1, len(fed) if reads == HiddenStates.ALL else None)
            layers = proposer.hidden_layers if proposer else ()
            # [k + 1, vocab], [rows, (len(layers) + 1) * hidden]: the layers' inputs, then the final state
            logits, states = (t.cpu() for t in runner.forward_with_hidden([step], layers))
            states = states[:, : len(layers) * states.shape[1] // (len(layers) + 1)] if layers else states
            if ban is not None:
                ban.apply(logits, len(seq.tokens))
            if params.logit_bias is not None:
                apply_logit_bias(logits, params.logit_bias)
            if penalties is not None:
                penalties.apply(logits, seq.tokens, draft.token_ids)
            if not params.greedy:
                apply_min_p(logits, params.min_p, params.temperature)
            result = verify(
                VerifyRequest(
                    logits,
                    draft.token_ids,
                    draft.q,
                    len(seq.tokens),
                    params.temperature,
                    params.top_k,
                    params.top_p,
                    seed,
                )
            )
            if reads == HiddenStates.LAST:
                hidden = states[result.num_accepted]
            elif reads == HiddenStates.ALL:
                hidden = states[: len(fed) - k + result.num_accepted]
            # commit, and roll the rejected drafts out of the cache
            seq.stats.record_round(k, result.num_accepted)
            stop_checker.commit(seq, result.token_ids)
            runner.truncate(seq.seq_id, len(seq.tokens) - 1)
    finally:
        runner.free(seq.seq_id)
        if proposer is not None:
            proposer.release(seq.seq_id)
    return seq
