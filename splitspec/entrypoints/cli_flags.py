"""Flags more than one subcommand takes, as rows (splitspec.entrypoints.flag_table) with their
environment defaults."""

from __future__ import annotations

import argparse

from splitspec.config import QUANTIZATIONS
from splitspec.devices import DEVICE_HELP
from splitspec.entrypoints.flag_table import ON_OFF, Flag, add_flags, settings_from
from splitspec.errors import SplitspecError
from splitspec.suffix_settings import SuffixSettings


def device_flag(what: str) -> Flag:
    return Flag(
        "--device", default="auto", env="DEVICE", help=f"where {what} runs: {DEVICE_HELP} (env SPLITSPEC_DEVICE)"
    )


TENSOR_PARALLEL_FLAG = Flag(
    "--tensor-parallel-size",
    short="-tp",
    type=int,
    default=1,
    env="TENSOR_PARALLEL_SIZE",
    help="split the target over this many processes, one device each (env SPLITSPEC_TENSOR_PARALLEL_SIZE)",
)
ENFORCE_EAGER_FLAG = Flag(
    "--enforce-eager",
    action="store_true",
    help="never replay CUDA graphs: every pass of the target runs kernel by kernel (as in vLLM)",
)

PREFIX_CACHING_FLAG = Flag(
    "--enable-prefix-caching",
    action=ON_OFF,
    default=True,
    help="keep full KV blocks of committed tokens for later requests that start with them (as vLLM; on by "
    "default: --no-enable-prefix-caching turns it off)",
)


def quantization_flag(what: str, env: str = "QUANTIZATION", fills: tuple[str, ...] | None = None) -> Flag:
    return Flag(
        "--quantization",
        short="-q",
        env=env,
        choices=QUANTIZATIONS,
        fills=fills,
        help=f"quantized weights for {what}: int8 (one scale per output row), int4 (groups of 32; CPU), gguf "
        f"(the 4-bit blocks of the GGUF it was converted from, as shipped; CPU) or fp8 (per-row weight scales, "
        f"activations quantized per token; FP8 tensor cores on CUDA) (env SPLITSPEC_{env})",
    )


_SUFFIX_DEFAULTS = SuffixSettings()
SUFFIX_FLAGS = (
    Flag(
        "--suffix-max-tree-depth",
        type=int,
        default=_SUFFIX_DEFAULTS.max_tree_depth,
        help="suffix: longest match and path",
        fills=("max_tree_depth",),
    ),
    Flag(
        "--suffix-max-cached-requests",
        type=int,
        default=_SUFFIX_DEFAULTS.max_cached_requests,
        help="suffix: past outputs kept for every request to draft from (0: only each request's own text)",
        fills=("max_cached_requests",),
    ),
    Flag(
        "--suffix-max-spec-factor",
        type=float,
        default=_SUFFIX_DEFAULTS.max_spec_factor,
        help="suffix: a match of m tokens drafts at most m times this",
        fills=("max_spec_factor",),
    ),
    Flag(
        "--suffix-min-token-prob",
        type=float,
        default=_SUFFIX_DEFAULTS.min_token_prob,
        help="suffix: stop drafting where the estimated probability falls below this",
        fills=("min_token_prob",),
    ),
)
"""--method suffix: the settings vLLM names suffix_decoding_* (splitspec.suffix_settings.SuffixSettings)."""


def add_device_flag(p: argparse.ArgumentParser, what: str) -> None:
    add_flags(p, [device_flag(what)])


def add_tensor_parallel_flag(p: argparse.ArgumentParser) -> None:
    add_flags(p, [TENSOR_PARALLEL_FLAG])


def add_enforce_eager_flag(p: argparse.ArgumentParser) -> None:
    add_flags(p, [ENFORCE_EAGER_FLAG])


def add_suffix_flags(p: argparse.ArgumentParser) -> None:
    add_flags(p, SUFFIX_FLAGS)


def suffix_settings_from(args: argparse.Namespace) -> SuffixSettings:
    try:
        return settings_from(SuffixSettings, args, SUFFIX_FLAGS, {})
    except SplitspecError as exc:  # named as the flag, not as the speculative_config key
        key, rest = str(exc).split(" ", 1)
        raise SplitspecError(f"--suffix-{key.removeprefix('suffix_decoding_').replace('_', '-')} {rest}") from None
