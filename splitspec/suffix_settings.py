"""Suffix decoding's settings, spelled as vLLM spells them in `speculative_config`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from splitspec.errors import SplitspecError

SUFFIX_CONFIG_KEYS = (
    "suffix_decoding_max_tree_depth",
    "suffix_decoding_max_cached_requests",
    "suffix_decoding_max_spec_factor",
    "suffix_decoding_min_token_prob",
)


@dataclass(frozen=True)
class SuffixSettings:
    max_tree_depth: int = 24
    """The longest match and the deepest path the suffix trees hold."""
    max_cached_requests: int = 10000
    """Outputs kept in the global tree, first in first out; 0: none, only each request's own tree."""
    max_spec_factor: float = 1.0
    """A match of m tokens drafts at most m * max_spec_factor tokens."""
    min_token_prob: float = 0.1
    """Drafting stops where the estimated probability of the tokens so far falls below this."""

    def __post_init__(self) -> None:
        if not _is_int(self.max_tree_depth) or self.max_tree_depth < 1:
            raise SplitspecError(f"suffix_decoding_max_tree_depth must be an integer >= 1, got {self.max_tree_depth!r}")
        if not _is_int(self.max_cached_requests) or self.max_cached_requests < 0:
            raise SplitspecError(
                f"suffix_decoding_max_cached_requests must be an integer >= 0, got {self.max_cached_requests!r}"
            )
        if not _is_number(self.max_spec_factor) or self.max_spec_factor < 0:
            raise SplitspecError(f"suffix_decoding_max_spec_factor must be >= 0, got {self.max_spec_factor!r}")
        if not _is_number(self.min_token_prob) or not 0 <= self.min_token_prob <= 1:
            raise SplitspecError(f"suffix_decoding_min_token_prob must be in [0, 1], got {self.min_token_prob!r}")


def suffix_settings(spec: dict[str, Any]) -> SuffixSettings:
    """The settings a `speculative_config` dict gives, vLLM's defaults for the rest."""
    given = {key.removeprefix("suffix_decoding_"): spec[key] for key in SUFFIX_CONFIG_KEYS if key in spec}
    return SuffixSettings(**given)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)
