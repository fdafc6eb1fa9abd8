"""DraftStep.tree_width at the proposer service: a drafter that branches answers a tree, drafts ahead
stay chains, and a width past the limit is refused with INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from proposer_svc.ngram import NgramProposer
from proposer_svc.service import ProposerService
from splitspec import draft_tree
from splitspec.errors import ServiceError
from splitspec.rpc import wire

# after the last "1 2", the text went on with 3, 4 and 5: three branches
CONTEXT = [1, 2, 3, 1, 2, 4, 1, 2, 5, 1, 2]
STEP = dict(start=0, committed_len=len(CONTEXT), token_ids=CONTEXT, num_tokens=6, temperature=0.0, top_k=0, seed=0)


def _drafts(*calls: dict) -> list:
    async def main():
        service = ProposerService(NgramProposer(1, 3), num_speculative_tokens=6)
        service.start()
        try:
            return [await service.draft(f"s{i}", **STEP, **call) for i, call in enumerate(calls)]
        finally:
            await service.close()

    return asyncio.run(main())


def test_a_tree_width_gets_a_tree_that_survives_the_wire_and_drafts_ahead_stay_chains() -> None:
    chain, tree, ahead = _drafts({}, {"tree_width": 3}, {"tree_width": 3, "assumed_token_ids": [3]})
    assert not chain.draft.is_tree
    assert tree.draft.is_tree
    assert sorted(tree.draft.token_ids[i] for i in draft_tree.children(tree.draft.parents)[-1]) == [3, 4, 5]
    assert wire.draft_from_proto(wire.draft_to_proto(tree.draft)).parents == tree.draft.parents
    assert ahead.draft.token_ids and not ahead.draft.is_tree


def test_a_tree_width_past_the_limit_is_refused() -> None:
    with pytest.raises(ServiceError) as refused:
        _drafts({"tree_width": 17})
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and "tree_width" in refused.value.message
