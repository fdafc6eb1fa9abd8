"""Drafting with a smaller causal LM that shares the target's tokenizer.

The draft model keeps its own KV cache per sequence. Each round it rolls its cache back to the longest
prefix it shares with the committed context, feeds the rest, then drafts token by token for the whole
batch at once. A sampling request draws each draft from the draft's temperature-scaled distribution
truncated to its top-k; that truncated distribution is sent as q, so verification stays exact.

A request with tree_width > 1 gets a tree (proposer_svc.tree_expansion) where the draft runner can
score one (supports_trees): each expansion is one tree pass over the last committed token and the
nodes on the paths to the nodes it expands, after which the draft cache is cut back to the committed
context. A greedy request's siblings are the draft's likeliest distinct tokens, one-hot. A sampled
request's are drawn from q without replacement, each sent with the q it was drawn from, for recursive
rejection sampling; one-hot siblings would be kept only where the target's own sample is one of them,
which accepted less than rejection sampling along a chain does (docs/benchmarks.md).
"""

from __future__ import annotations

import torch

from proposer_svc.proposer import Proposer
from proposer_svc.tree_expansion import TreeExpansion
from splitspec import draft_tree, seeded_noise
from splitspec.adaptive_k import AcceptanceEstimate
from splitspec.draft_tree import ROOT
from splitspec.drafts import Draft, DraftRequest
from splitspec.errors import OutOfKVBlocks
from splitspec.logits_processing import target_probs
from splitspec.models.runner import ForwardInput, ModelRunner
from splitspec.sparse_distribution import SparseDistribution


class DraftModelProposer(Proposer):
    method = "draft_model"
    samples_drafts = True
    drafts_after_rejection = True

    def __init__(self, runner: ModelRunner, *, target_vocab_size: int, draft_top_k: int = 16) -> None:
        self.runner = runner
        self.target_vocab_size = target_vocab_size
        self.draft_top_k = draft_top_k
        self._cached_tokens: dict[str, list[int]] = {}  # tokens whose KV the draft cache holds
        self._acceptance: dict[str, _SiblingAcceptance] = {}  # of each sequence's sampled trees
        self._last_tree: dict[str, tuple[int, Draft]] = {}  # (context length, tree) last drafted, sampled

    def release(self, seq_id: str) -> None:
        self.runner.free(seq_id)
        self._cached_tokens.pop(seq_id, None)
        self._acceptance.pop(seq_id, None)
        self._last_tree.pop(seq_id, None)

    def propose(self, requests: list[DraftRequest]) -> list[Draft]:
        """Requests for the same sequence (drafts ahead for several outcomes) go in separate batches,
        since each rolls the sequence's one draft cache to its own context."""
        drafts: list[Draft] = [Draft() for _ in requests]
        pending = list(range(len(requests)))
        while pending:
            batch: dict[str, int] = {}
            for i in pending:
                batch.setdefault(requests[i].seq_id, i)
            rows = list(batch.values())
            for i, draft in zip(rows, self._propose_distinct([requests[i] for i in rows])):
                drafts[i] = draft
            taken = set(rows)
            pending = [i for i in pending if i not in taken]
        return drafts

    def _propose_distinct(self, requests: list[DraftRequest]) -> list[Draft]:
        drafts = [Draft() for _ in requests]
        fits = [
            i
            for i, r in enumerate(requests)
            if r.num_tokens > 0 and len(r.token_ids) + r.num_tokens <= self.runner.max_model_len
        ]
        trees = [i for i in fits if requests[i].tree_width > 1 and self.runner.supports_trees]
        for i, draft in zip(trees, self._propose_trees([requests[i] for i in trees])):
            drafts[i] = draft
        active = [i for i in fits if i not in trees]
        feeds: dict[int, list[int]] = {i: self._catch_up(requests[i]) for i in active}
        for step in range(max((requests[i].num_tokens for i in active), default=0)):
            active = [i for i in active if requests[i].num_tokens > step]
            inputs = [ForwardInput(requests[i].seq_id, feeds[i], 1) for i in active]
            try:
                logits = self._logits(inputs)  # [len(active), vocab]
            except OutOfKVBlocks:
                for i in active:  # out of draft cache: stop drafting this round, lose no output
                    self.release(requests[i].seq_id)
                break
            for row, i in enumerate(active):
                req = requests[i]
                self._cached_tokens[req.seq_id].extend(feeds[i])
                row_logits = logits[row]
                excluded = [t for t in req.excluded_first if 0 <= t < row_logits.shape[-1]] if step == 0 else []
                if excluded:
                    row_logits = row_logits.index_fill(0, torch.tensor(excluded), float("-inf"))
                token, q = self._draw(row_logits, req, position=len(req.token_ids) + step)
                drafts[i].token_ids.append(token)
                drafts[i].q.append(q)
                feeds[i] = [token]
        return drafts

    def _propose_trees(self, requests: list[DraftRequest]) -> list[Draft]:
        """A tree per request, every request's expansion in one tree pass per level."""
        if not requests:
            return []
        feeds = [self._catch_up(req) for req in requests]
        try:
            logits = self._logits([ForwardInput(r.seq_id, f, 1) for r, f in zip(requests, feeds)])
        except OutOfKVBlocks:
            for req in requests:
                self.release(req.seq_id)
            return [Draft() for _ in requests]
        trees = [TreeExpansion(r.num_tokens, r.tree_width) for r in requests]
        acceptance = [self._measured_acceptance(r) for r in requests]
        for row, (req, feed, tree) in enumerate(zip(requests, feeds, trees)):
            self._cached_tokens[req.seq_id].extend(feed)
            self._expand(tree, ROOT, logits[row], req, acceptance[row], req.excluded_first)
        while True:
            frontiers = [tree.frontier() for tree in trees]
            expanding = [i for i, frontier in enumerate(frontiers) if frontier]
            if not expanding:
                break
            inputs = []
            for i in expanding:
                req, tree = requests[i], trees[i]
                fed = tree.path_nodes(frontiers[i])
                self.runner.truncate(req.seq_id, len(req.token_ids) - 1)  # re-feed the last committed token
                tokens = [req.token_ids[-1], *tree.tokens_of(fed)]
                inputs.append(ForwardInput(req.seq_id, tokens, len(frontiers[i]), tree=tree.parents_within(fed)))
            try:
                logits = self._logits(inputs)
            except OutOfKVBlocks:
                for req in requests:  # out of draft cache: draft what was found so far
                    self.release(req.seq_id)
                break
            row = 0
            for i in expanding:
                self.runner.truncate(requests[i].seq_id, len(requests[i].token_ids))
                for node in frontiers[i]:
                    self._expand(trees[i], node, logits[row], requests[i], acceptance[i])
                    row += 1
        drafts = [tree.draft() for tree in trees]
        for req, draft in zip(requests, drafts):
            if req.temperature > 0:
                self._last_tree[req.seq_id] = (len(req.token_ids), draft)
        return drafts

    def _measured_acceptance(self, req: DraftRequest) -> _SiblingAcceptance:
        """How often the sequence's sampled trees kept a first child, and a later one once those before
        it failed (expand_drawn's acceptance): the tokens committed since its last tree, walked down that
        tree, tell at each token reached which of its children was kept, if any."""
        estimate = self._acceptance.setdefault(req.seq_id, _SiblingAcceptance())
        base, last = self._last_tree.pop(req.seq_id, (0, None))
        if last is not None and len(req.token_ids) > base:
            estimate.record(last, req.token_ids[base:])
        return estimate

    def _logits(self, inputs: list[ForwardInput]) -> torch.Tensor:
        return self.runner.forward(inputs)[:, : self.target_vocab_size].cpu()

    def _expand(
        self,
        tree: TreeExpansion,
        node: int,
        logits: torch.Tensor,
        req: DraftRequest,
        acceptance: _SiblingAcceptance,
        excluded: tuple[int, ...] = (),
    ) -> None:
        """Greedy: the likeliest tokens under the draft at temperature 1 over its top-k, one-hot. Sampled:
        tokens drawn without replacement from q, the chain's distribution (_draw), the first of them from
        the chain's own stream, so a tree's first children are the chain the request would draft; ranked
        by the sequence's measured acceptance."""
        top_k = self.draft_top_k if req.top_k <= 0 else min(req.top_k, self.draft_top_k)
        excluded = tuple(t for t in excluded if 0 <= t < logits.shape[-1])
        if excluded:
            logits = logits.index_fill(0, torch.tensor(excluded), float("-inf"))
        if req.temperature == 0:
            tree.expand(node, target_probs(logits[None], 1.0, top_k, 1.0)[0])
            return
        depth = 0 if node == ROOT else tree.nodes[node].depth
        noise = seeded_noise.exponentials(req.seed, len(req.token_ids) + depth, seeded_noise.DRAFT, logits.shape[-1])
        probs = target_probs(logits[None], req.temperature, top_k, 1.0)[0]
        tree.expand_drawn(node, probs, noise, acceptance.rates(depth))

    def _catch_up(self, req: DraftRequest) -> list[int]:
        """Roll the draft cache back to the prefix it shares with the context; return what to feed."""
        cached = self._cached_tokens.setdefault(req.seq_id, [])
        common = 0
        limit = min(len(cached), len(req.token_ids) - 1)  # always re-feed at least the last token
        while common < limit and cached[common] == req.token_ids[common]:
            common += 1
        if self.runner.cached_length(req.seq_id) > common:
            self.runner.truncate(req.seq_id, common)
        del cached[common:]
        return req.token_ids[common:]

    def _draw(self, logits: torch.Tensor, req: DraftRequest, position: int) -> tuple[int, SparseDistribution | None]:
        if req.temperature == 0:
            return int(torch.argmax(logits).item()), None
        top_k = self.draft_top_k if req.top_k <= 0 else min(req.top_k, self.draft_top_k)
        probs = target_probs(logits[None], req.temperature, top_k, 1.0)[0]  # [vocab] float64
        support = torch.nonzero(probs > 0).flatten()
        q = SparseDistribution(support, probs[support])
        noise = seeded_noise.exponentials(req.seed, position, seeded_noise.DRAFT, probs.shape[-1])
        token = int(torch.argmax(probs / noise).item())
        return token, q


class _SiblingAcceptance:
    """A sequence's acceptance of sampled tree tokens by sibling rank: of a first child, by its depth (a
    draft that follows the target early tends to go on doing so, as a chain's acceptance by position
    shows), shrunk toward its pooled rate (prior 0.75, a chain's); and of a later one, tried once the
    ones before it failed (prior 0.1: rejection sampling leaves the residual where q is short, which q's
    next draws rarely hit)."""

    def __init__(self) -> None:
        self.first = AcceptanceEstimate()
        self.later = AcceptanceEstimate(prior_accepted=1.0, prior_rejected=9.0)
        self.first_kept: list[float] = []  # by depth, forgetting at the pooled estimate's pace
        self.first_tried: list[float] = []

    def record(self, tree: Draft, committed: list[int]) -> None:
        kids, node, outcomes = draft_tree.children(tree.parents or []), ROOT, []
        for token in committed:
            options = kids.get(node, [])
            if not options:
                break
            kept = next((j for j, c in enumerate(options) if tree.token_ids[c] == token), None)
            tried = len(options) if kept is None else kept + 1
            outcomes.append(kept == 0)
            self.first.update(1, int(kept == 0))
            for j in range(1, tried):
                self.later.update(1, int(j == kept))
            if kept is None:
                break
            node = options[kept]
        grow = len(outcomes) - len(self.first_tried)
        if grow > 0:
            self.first_tried.extend([0.0] * grow)
            self.first_kept.extend([0.0] * grow)
        for depth in range(len(self.first_tried)):
            self.first_tried[depth] = self.first_tried[depth] * self.first.decay + (depth < len(outcomes))
            self.first_kept[depth] = self.first_kept[depth] * self.first.decay + (
                depth < len(outcomes) and outcomes[depth]
            )

    def rates(self, depth: int) -> tuple[float, float]:
        """(first child's, later one's) acceptance for the children of a node at `depth` (0: the root)."""
        pooled = self.first.rate
        if depth < len(self.first_tried):
            first = (self.first_kept[depth] + 2.0 * pooled) / (self.first_tried[depth] + 2.0)
        else:
            first = pooled
        return min(max(first, 0.05), 0.95), min(max(self.later.rate, 0.05), 0.95)
