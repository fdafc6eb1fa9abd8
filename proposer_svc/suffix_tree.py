"""A depth-limited suffix tree over token sequences, with counts, for suffix decoding (proposer_svc.suffix).

Every suffix of every sequence, cut to its first `max_depth` tokens, is a path from the root. A node's
`count` is how many of those paths reach it (end at it or pass through it), so along a path
child.count / node.count estimates how often the text continued that way. Paths are compressed: a node
stands for a run of tokens (its label) that no path leaves halfway, stored as a slice of one of the
sequences that passes through it. That keeps the tree at O(tokens) nodes however much text repeats.

Sequences grow a token at a time: each keeps the nodes where its last `max_depth` suffixes end (its
active nodes), and a new token extends each of them by one step. Three cases keep the compression:

- the suffix is the only path through its node (count 1): the node's label grows by the token;
- every other path through the node goes on to the one child that starts with the token: the node
  takes that token into its label (and absorbs the child if the child held nothing else);
- otherwise the suffix moves into the child for the token, splitting the child after its first token
  when its label is longer, or into a new leaf.

Speculation follows SuffixDecoding (Oliaro et al. 2024; Arctic Inference): for each match length, find
the node the context's last tokens lead to and follow the most frequent child while the product of the
frequency estimates stays at or above `min_token_prob`; the draft with the highest sum of those
estimates wins. `speculate_tree` keeps up to `width` children per token instead of the most frequent
one: the tokens of highest estimate below the matched node, best first (the tree Arctic Inference's
suffix decoding drafts).
"""

from __future__ import annotations

import heapq
from array import array
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field


class _Node:
    __slots__ = ("count", "children", "top", "parent", "ref", "start", "length")

    def __init__(self, count: int, parent: _Node | None, ref: array, start: int, length: int) -> None:
        self.count = count
        self.children: dict[int, _Node] | None = None  # keyed by each child's first token
        self.top: _Node | None = None  # the child with the highest count; None: unknown (recomputed)
        self.parent = parent
        self.ref = ref  # the label is ref[start : start + length]
        self.start = start
        self.length = length

    def most_frequent_child(self) -> _Node | None:
        if self.top is None and self.children:
            self.top = max(self.children.values(), key=lambda c: c.count)
        return self.top

    def counted_up(self, child: _Node) -> None:
        """child's count rose: it may now be the most frequent."""
        if self.top is not None and child.count > self.top.count:
            self.top = child


@dataclass
class Speculation:
    token_ids: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    """The frequency estimate of each token given the match and the tokens before it."""
    score: float = 0.0
    """The sum of probs: the expected number of accepted tokens, were the estimates right."""
    match_len: int = 0
    cut: bool = False
    """It ended only because its path reached max_depth tokens: the text may well go on."""
    parents: list[int] | None = None
    """A tree's parent of each token (splitspec.draft_tree); None for a chain."""


class SuffixTree:
    def __init__(self, max_depth: int) -> None:
        if max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {max_depth}")
        self.max_depth = max_depth
        self.root = _Node(0, None, array("i"), 0, 0)
        self.root.children = {}
        self._seqs: dict[Hashable, array] = {}
        self._active: dict[Hashable, deque[_Node]] = {}

    def __contains__(self, seq_id: Hashable) -> bool:
        return seq_id in self._seqs

    @property
    def num_seqs(self) -> int:
        return len(self._seqs)

    @property
    def num_tokens(self) -> int:
        return sum(len(seq) for seq in self._seqs.values())

    def count(self, pattern: Sequence[int]) -> int:
        """How many paths reach the end of `pattern`: its occurrences in the sequences, when it has at
        most max_depth tokens (0 when longer)."""
        if not pattern:
            return self.root.count
        node, _ = self._find(pattern)
        return node.count if node is not None else 0

    def num_nodes(self) -> int:
        stack, total = [self.root], 0
        while stack:
            node = stack.pop()
            total += 1
            stack.extend((node.children or {}).values())
        return total

    def extend(self, seq_id: Hashable, tokens: Sequence[int]) -> None:
        """Append tokens to the sequence seq_id (a new one if it has none yet)."""
        seq = self._seqs.get(seq_id)
        if seq is None:
            seq = self._seqs[seq_id] = array("i")
            self._active[seq_id] = deque()
        active = self._active[seq_id]
        for token in tokens:
            self._append(seq, active, token)

    def _append(self, seq: array, active: deque[_Node], token: int) -> None:
        root = self.root
        active.append(root)  # the suffix that starts with this token
        root.count += 1
        if len(active) > self.max_depth:
            active.popleft()  # the oldest suffix has reached max_depth tokens: it stays where it ends
        seq.append(token)
        n = len(seq)
        for i, node in enumerate(active):
            children = node.children
            child = children.get(token) if children else None
            if child is None:
                if node.count == 1 and node is not root:  # a leaf only this suffix reaches
                    node.length += 1
                    node.ref, node.start = seq, n - node.length
                    continue
                leaf = _Node(1, node, seq, n - 1, 1)
                if children is None:
                    node.children = children = {}
                if not children:
                    node.top = leaf
                children[token] = leaf
                active[i] = leaf
            elif node.count == child.count + 1 and node is not root:
                # this suffix ends at node and every other path through node goes on into child
                if child.length == 1:  # child becomes node extended by the token
                    parent = node.parent
                    child.count += 1
                    child.length = node.length + 1
                    child.ref, child.start = seq, n - child.length
                    child.parent = parent
                    parent.children[seq[child.start]] = child
                    if parent.top is node:
                        parent.top = child
                    active[i] = child
                else:  # node takes the child's first token into its label
                    node.length += 1
                    node.ref, node.start = seq, n - node.length
                    del children[token]
                    child.start += 1
                    child.length -= 1
                    children[child.ref[child.start]] = child
            elif child.length == 1:
                child.count += 1
                node.counted_up(child)
                active[i] = child
            else:  # split child after its first token; this suffix ends at the split
                middle = _Node(child.count + 1, node, child.ref, child.start, 1)
                child.parent = middle
                child.start += 1
                child.length -= 1
                middle.children = {child.ref[child.start]: child}
                middle.top = child
                children[token] = middle
                if node.top is child:
                    node.top = middle
                else:
                    node.counted_up(middle)
                active[i] = middle

    def remove(self, seq_id: Hashable) -> None:
        """Take every suffix of the sequence out of the tree."""
        seq = self._seqs.pop(seq_id)
        del self._active[seq_id]
        n = len(seq)
        for start in range(n):
            end = min(n, start + self.max_depth)
            node, pos = self.root, start
            node.count -= 1
            while pos < end:
                token = seq[pos]
                child = node.children[token]
                child.count -= 1
                if node.top is child:
                    node.top = None
                if child.count == 0:  # nothing else reaches it, nor anything below it
                    del node.children[token]
                    break
                if child.ref is seq:  # others still pass through: keep its label without this sequence
                    child.ref, child.start = array("i", seq[child.start : child.start + child.length]), 0
                pos += child.length
                node = child

    def speculate(
        self, context: Sequence[int], max_spec_tokens: int, max_spec_factor: float, min_token_prob: float
    ) -> Speculation:
        """The best continuation of `context`: for each match length m (its last m tokens, found in the
        tree), at most min(max_spec_tokens, m * max_spec_factor) tokens along the most frequent path."""
        context = context[-self.max_depth :]
        best = Speculation()
        for match_len in range(1, len(context)):
            node, offset = self._find(context[len(context) - match_len :])
            if node is None:
                break  # a longer suffix of the context cannot be found either
            limit = min(max_spec_tokens, int(match_len * max_spec_factor + 1e-6))
            speculation = self._follow(node, offset, limit, min_token_prob)
            if speculation.score >= best.score:
                speculation.match_len = match_len
                drafted = len(speculation.token_ids)
                speculation.cut = drafted > 0 and match_len + drafted == self.max_depth
                best = speculation
        return best

    def speculate_tree(
        self, context: Sequence[int], max_spec_tokens: int, width: int, max_spec_factor: float, min_token_prob: float
    ) -> Speculation:
        """As speculate, but a tree: for each match length, the at most min(max_spec_tokens, m *
        max_spec_factor) continuations of highest estimate, at most `width` below each token."""
        context = context[-self.max_depth :]
        best = Speculation()
        for match_len in range(1, len(context)):
            node, offset = self._find(context[len(context) - match_len :])
            if node is None:
                break
            limit = min(max_spec_tokens, int(match_len * max_spec_factor + 1e-6))
            speculation = self._best_first(node, offset, limit, width, min_token_prob)
            if speculation.score >= best.score:
                speculation.match_len = match_len
                best = speculation
        return best

    @staticmethod
    def _best_first(node: _Node, offset: int, limit: int, width: int, min_token_prob: float) -> Speculation:
        """The `limit` tokens of highest estimate below (node, offset), at most `width` children each. A
        token's estimate is at most its parent's, so each comes after its parent, siblings likeliest first."""
        speculation = Speculation(parents=[])
        heap: list[tuple[float, int, int, _Node, int]] = []  # (-estimate, order, parent, node, offset)
        order = 0

        def push_next(parent: int, node: _Node, offset: int, prob: float) -> None:
            nonlocal order
            if offset < node.length:
                nexts = [(prob, node, offset)]
            else:
                top = node.most_frequent_child()  # first, so that width 1 drafts speculate's chain
                others = (c for c in node.children.values() if c is not top) if top is not None else ()
                kids = ([top] if top is not None else []) + sorted(others, key=lambda c: -c.count)[: width - 1]
                nexts = [(prob * kid.count / node.count, kid, 0) for kid in kids]
            for p, at, off in nexts:
                if p >= min_token_prob:
                    heapq.heappush(heap, (-p, order, parent, at, off))
                    order += 1

        push_next(-1, node, offset, 1.0)
        while heap and len(speculation.token_ids) < limit:
            neg_prob, _, parent, at, off = heapq.heappop(heap)
            speculation.token_ids.append(at.ref[at.start + off])
            speculation.parents.append(parent)
            speculation.probs.append(-neg_prob)
            speculation.score -= neg_prob
            push_next(len(speculation.token_ids) - 1, at, off + 1, -neg_prob)
        return speculation

    def _find(self, pattern: Sequence[int]) -> tuple[_Node | None, int]:
        """The node where the path spelling `pattern` ends, and how far into its label."""
        node, offset = self.root, 0
        for token in pattern:
            if offset == node.length:
                node = node.children.get(token) if node.children else None
                if node is None:
                    return None, 0
                offset = 0
            if node.ref[node.start + offset] != token:
                return None, 0
            offset += 1
        return node, offset

    @staticmethod
    def _follow(node: _Node, offset: int, limit: int, min_token_prob: float) -> Speculation:
        speculation = Speculation()
        prob = 1.0
        while len(speculation.token_ids) < limit and prob >= min_token_prob:
            if offset < node.length:
                speculation.token_ids.append(node.ref[node.start + offset])
                speculation.probs.append(prob)
                speculation.score += prob
                offset += 1
                continue
            child = node.most_frequent_child()
            if child is None:
                break
            prob *= child.count / node.count
            node, offset = child, 0
        return speculation
