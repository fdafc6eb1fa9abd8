"""Flags more than one subcommand takes, with their environment defaults."""

from __future__ import annotations

import argparse
import os

from splitspec.devices import DEVICE_HELP
from splitspec.errors import SplitspecError
from splitspec.suffix_settings import SuffixSettings


def env_default(name: str, default):
    """SPLITSPEC_<name> as the flag's default. It stays a string: argparse converts it with the flag's
    type only for the subcommand that runs, and reports a bad value as it would a bad flag."""
    return os.environ.get(f"SPLITSPEC_{name}", default)


def add_device_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--device",
        default=env_default("DEVICE", "auto"),
        help=f"where {what} runs: {DEVICE_HELP} (env SPLITSPEC_DEVICE)",
    )


def add_tensor_parallel_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tensor-parallel-size",
        "-tp",
        type=int,
        default=env_default("TENSOR_PARALLEL_SIZE", 1),
        help="split the target over this many processes, one device each (env SPLITSPEC_TENSOR_PARALLEL_SIZE)",
    )


def add_enforce_eager_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--enforce-eager",
        action="store_true",
        help="never replay CUDA graphs: every pass of the target runs kernel by kernel (as in vLLM)",
    )


def add_suffix_flags(p: argparse.ArgumentParser) -> None:
    """--method suffix: the settings vLLM names suffix_decoding_* (splitspec.suffix_settings)."""
    defaults = SuffixSettings()
    p.add_argument(
        "--suffix-max-tree-depth", type=int, default=defaults.max_tree_depth, help="suffix: longest match and path"
    )
    p.add_argument(
        "--suffix-max-cached-requests",
        type=int,
        default=defaults.max_cached_requests,
        help="suffix: past outputs kept for every request to draft from (0: only each request's own text)",
    )
    p.add_argument(
        "--suffix-max-spec-factor",
        type=float,
        default=defaults.max_spec_factor,
        help="suffix: a match of m tokens drafts at most m times this",
    )
    p.add_argument(
        "--suffix-min-token-prob",
        type=float,
        default=defaults.min_token_prob,
        help="suffix: stop drafting where the estimated probability falls below this",
    )


def suffix_settings_from(args: argparse.Namespace) -> SuffixSettings:
    try:
        return SuffixSettings(
            max_tree_depth=args.suffix_max_tree_depth,
            max_cached_requests=args.suffix_max_cached_requests,
            max_spec_factor=args.suffix_max_spec_factor,
            min_token_prob=args.suffix_min_token_prob,
        )
    except SplitspecError as exc:  # named as the flag, not as the speculative_config key
        key, rest = str(exc).split(" ", 1)
        raise SplitspecError(f"--suffix-{key.removeprefix('suffix_decoding_').replace('_', '-')} {rest}") from None


def suffix_flag_args(args: argparse.Namespace) -> list[str]:
    """The suffix flags as given, to pass on to `serve-proposer`."""
    settings = suffix_settings_from(args)
    return [
        "--suffix-max-tree-depth", str(settings.max_tree_depth),
        "--suffix-max-cached-requests", str(settings.max_cached_requests),
        "--suffix-max-spec-factor", repr(settings.max_spec_factor),
        "--suffix-min-token-prob", repr(settings.min_token_prob),
    ]  # fmt: skip
