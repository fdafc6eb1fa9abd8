"""Structured output under speculation: the target's distribution at every position is the one masked by
the request's grammar (xgrammar, as vLLM and SGLang use), and drafts are checked against it.

A verify pass over drafts d_0..d_{k-1} needs the grammar's mask at each row: row j scores the position
after the committed tokens and d_0..d_{j-1}. `GrammarState.plan` walks the matcher through the draft,
filling one mask per row, and rolls it back to the committed tokens; `advance` then moves it through
the tokens the pass commits. Greedy output is therefore plain constrained decoding's, and sampled output
has the constrained law.

A drafted token the grammar forbids has probability 0 under the masked target, so it is rejected for
certain, and nothing after it can be accepted: the pass feeds the draft only up to it, and costs no
row for it or for what follows. It is still judged: with a sampled draft its rejection draws the
correction from the residual max(p - q, 0), as an uncut pass would; drawing from p there instead, as for
a draft that ended, would skew the law whenever q puts mass on forbidden tokens. (With a greedy or a
one-hot draft the two are the same.)
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from splitspec.errors import SplitspecError
from splitspec.structured_outputs import StructuredOutputsParams

MAX_COMPILED = 64  # grammars kept compiled per compiler, least recently used dropped


@dataclass
class GrammarPlan:
    """One step's walk: `fed` draft tokens are fed to the target (all it allows), `judged` are verified
    (one more when the draft holds a forbidden token: that token, certain to be rejected), and
    `bitmask` [fed + 1, words] holds each fed row's mask."""

    fed: int
    judged: int
    bitmask: torch.Tensor


class GrammarState:
    """One sequence's matcher, in step with its committed output."""

    def __init__(self, matcher, vocab_size: int) -> None:
        self._matcher = matcher
        self._vocab_size = vocab_size

    def advance(self, token_ids: Iterable[int]) -> None:
        """Move through committed tokens (all allowed: they were drawn from masked rows)."""
        for token in token_ids:
            if self._matcher.is_terminated():
                return
            if not self._matcher.accept_token(token):
                raise SplitspecError(f"token {token} does not follow the request's structured output grammar")

    def plan(self, draft_token_ids: list[int]) -> GrammarPlan:
        import xgrammar as xgr

        bitmask = xgr.allocate_token_bitmask(len(draft_token_ids) + 1, self._vocab_size)  # all allowed
        accepted, forbidden = 0, False
        for row in range(len(draft_token_ids) + 1):
            if self._matcher.is_terminated():  # after the stop token: the sequence ends there, no mask
                break
            self._matcher.fill_next_token_bitmask(bitmask, row)
            if row == len(draft_token_ids):
                break
            if not self._matcher.accept_token(draft_token_ids[row]):
                forbidden = True
                break
            accepted += 1
        self._matcher.rollback(accepted)
        return GrammarPlan(accepted, accepted + forbidden, bitmask[: accepted + 1])

    @staticmethod
    def apply(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
        """logits [rows, vocab], masked in place by bitmask [rows, words]."""
        import xgrammar as xgr

        with torch.inference_mode():  # the runner's logits are inference tensors
            xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device))


class GrammarCompiler:
    """Compiles requests' structured outputs for one tokenizer, keeping the latest ones; callable from
    several threads. xgrammar is imported on the first request that asks for one."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: Iterable[int]) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._eos = sorted(eos_token_ids)
        self._compiler = None
        self._compiled: OrderedDict[tuple[str, str], object] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, params: StructuredOutputsParams):
        """The compiled grammar; a SplitspecError naming what is wrong if it does not compile."""
        with self._lock:
            return self._compile(params)

    def _compile(self, params: StructuredOutputsParams):
        if self._tokenizer is None:
            raise SplitspecError("structured outputs need the model's tokenizer, and this model has none")
        key = params.key
        if key in self._compiled:
            self._compiled.move_to_end(key)
            return self._compiled[key]
        compiler = self._xgrammar_compiler()
        try:
            if params.json is not None:
                compiled = compiler.compile_json_schema(params.json_schema)
            elif params.json_object:  # OpenAI's promise is an object; xgrammar's builtin JSON is any value
                compiled = compiler.compile_json_schema('{"type": "object"}')
            elif params.regex is not None:
                compiled = compiler.compile_regex(params.regex)
            elif params.choice is not None:
                compiled = compiler.compile_grammar(choice_grammar(params.choice))
            else:
                compiled = compiler.compile_grammar(params.grammar)
        except RuntimeError as exc:
            raise SplitspecError(f"structured_outputs.{params.kind}: {_xgrammar_message(exc)}") from None
        self._compiled[key] = compiled
        if len(self._compiled) > MAX_COMPILED:
            self._compiled.popitem(last=False)
        return compiled

    def state(self, params: StructuredOutputsParams, output_token_ids: list[int]) -> GrammarState:
        """A matcher for a new sequence, moved through the output it already has (a resumed sequence)."""
        import xgrammar as xgr

        state = GrammarState(xgr.GrammarMatcher(self.compile(params)), self._vocab_size)
        state.advance(output_token_ids)
        return state

    def _xgrammar_compiler(self):
        if self._compiler is None:
            import xgrammar as xgr

            info = xgr.TokenizerInfo.from_huggingface(
                self._tokenizer, vocab_size=self._vocab_size, stop_token_ids=self._eos
            )
            self._compiler = xgr.GrammarCompiler(info)
        return self._compiler


def choice_grammar(choices: Iterable[str]) -> str:
    """EBNF whose sentences are exactly the choices (JSON's string escapes are EBNF's)."""
    return "root ::= " + " | ".join(json.dumps(choice, ensure_ascii=False) for choice in choices)


def _xgrammar_message(exc: RuntimeError) -> str:
    """xgrammar's error without its timestamp and C++ source location."""
    text = str(exc).strip()
    text = re.sub(r"^\[[^\]]*\]\s*\S+:\d+:\s*", "", text)
    return re.sub(r"^Check failed: \(.*?\) is false:\s*", "", text)
